"""Polishing a finished sample (``sci_diffusion.polish``): with the exact denoiser it contracts a Gaussian towards its
mean by the analytic factor, carries mixture samples to the modes, moves only the Gaussian entries (zero centre of mass
kept), runs after the sampler at its own time, and refuses bad settings in one sentence."""
import pytest
import torch

from sci_diffusion.gaussian_mixture import GaussianMixture
from sci_diffusion.polish import Polish, polish
from sci_diffusion.samplers import get_sampler
from sci_diffusion.schedules import NoiseSchedule
from sci_diffusion.state_spaces import EuclideanSpace, StackedSpace, ZeroCoMSpace
from sci_diffusion.time_grids import time_grid

from .bond_state import bond_state

SCHEDULE = NoiseSchedule.from_name("polynomial_2", 1000)
SPACE = EuclideanSpace()


def coefficients(t: float) -> tuple[float, float]:
    tt = torch.tensor(t, dtype=torch.float64)
    return float(SCHEDULE.alpha(tt)), float(SCHEDULE.sigma(tt))


def test_polishing_one_gaussian_contracts_it_towards_its_mean_by_the_analytic_factor():
    """On ``N(mu, s^2)`` each iteration maps ``x - mu`` to ``r (x - mu)``, ``r = alpha^2 s^2 / (alpha^2 s^2 +
    sigma^2)``: exact draws keep their mean, and their spread shrinks by ``r^K`` after K iterations."""
    s, t, k = 0.3, 0.1, 4
    mu = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    gaussian = GaussianMixture(torch.ones(1, dtype=torch.float64), mu, s**2 * torch.eye(2, dtype=torch.float64)[None])
    x = gaussian.sample(200000, torch.Generator().manual_seed(0))
    polished = polish(gaussian.exact_denoiser(SCHEDULE), x, SCHEDULE, t, k, SPACE)
    alpha, sigma = coefficients(t)
    r = alpha**2 * s**2 / (alpha**2 * s**2 + sigma**2)
    assert 0.3 < r**k < 0.9  # the test sees a real contraction, not the identity nor a collapse
    assert torch.allclose(polished - mu, r**k * (x - mu), atol=1e-5)  # affine here, so per point (the network sees t in float32)
    assert torch.allclose(polished.std(0), torch.full((2,), s * r**k, dtype=torch.float64), rtol=0.01)


def test_polishing_carries_mixture_samples_to_the_modes_and_raises_their_density():
    """Many iterations at a small time bring every exact draw of the three-component mixture to within 0.05 of a
    component mean (the blurred density's modes sit there), and each point's density under ``p_t`` only grows."""
    gmm = GaussianMixture.default_2d()
    x = gmm.sample(3000, torch.Generator().manual_seed(0))
    denoiser = gmm.exact_denoiser(SCHEDULE)
    alpha, sigma = coefficients(0.05)
    eye = torch.eye(2, dtype=torch.float64)

    def log_p_t(points):
        dist = torch.distributions.MultivariateNormal(alpha * gmm.means, covariance_matrix=alpha**2 * gmm.covs
                                                      + sigma**2 * eye)
        return (dist.log_prob(alpha * points[:, None, :]) + gmm.weights.log()).logsumexp(1)

    few = polish(denoiser, x, SCHEDULE, 0.05, 20, SPACE)
    many = polish(denoiser, few, SCHEDULE, 0.05, 400, SPACE)
    assert (log_p_t(few) >= log_p_t(x) - 1e-9).all() and (log_p_t(many) >= log_p_t(few) - 1e-9).all()
    nearest = torch.cdist(many, gmm.means).min(1).values
    assert nearest.max() < 0.05, float(nearest.max())
    assert torch.cdist(x, gmm.means).min(1).values.median() > 0.2  # the draws started spread out


def test_only_the_gaussian_entries_move_and_the_centre_of_mass_stays_at_zero():
    space, x_t, probs, teacher = bond_state(SCHEDULE, samples=6)
    finished = torch.cat([x_t[:6], torch.nn.functional.one_hot(probs.argmax(1), 3).float()])
    polished = polish(teacher, finished, SCHEDULE, 0.1, 3, space)
    assert torch.equal(polished[6:], finished[6:]) and torch.equal(polished[:6, 2], finished[:6, 2])  # bonds, padding
    assert not torch.allclose(polished[:6, :2], finished[:6, :2])
    first_only = polish(teacher, finished, SCHEDULE, 0.1, 3, space, columns=1)  # a molecule's coordinates, say
    assert torch.equal(first_only[:, 1:], finished[:, 1:]) and torch.equal(first_only[:6, 0], polished[:6, 0])

    com_space = ZeroCoMSpace(batch=torch.tensor([0, 0, 0, 1, 1]), num_samples=2)
    x = com_space.project(torch.randn(5, 3, dtype=torch.float64))
    moved = polish(lambda x, t, cond=None: x + 1.0, x, SCHEDULE, 0.1, 2, com_space)
    assert torch.allclose(com_space.centre_of_mass(moved), torch.zeros(2, 3, dtype=torch.float64), atol=1e-12)
    assert isinstance(space, StackedSpace)


def test_polish_runs_after_the_sampler_at_its_own_time_and_costs_its_iterations():
    calls = []

    def denoiser(x, t, cond=None):
        calls.append(float(t))
        return 0.5 * x

    plan = Polish(iterations=3, t=0.02)
    sample = plan.wrap(get_sampler("ddpm"))
    sample(denoiser, torch.zeros(3, 2), SCHEDULE, time_grid(SCHEDULE, 5), SPACE, generator=torch.Generator())
    assert len(calls) == 5 + plan.function_evaluations() == 8
    assert calls[5:] == pytest.approx([0.02] * 3)


def test_bad_polish_settings_are_refused_in_one_sentence():
    with pytest.raises(ValueError, match="whole number >= 0"):
        Polish(iterations=-2)
    with pytest.raises(ValueError, match=r"time in \(0, 1\)"):
        Polish(t=0.0)
    with pytest.raises(ValueError, match="at least one column"):
        Polish(columns=0)
