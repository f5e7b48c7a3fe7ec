"""Restart sampling from the end of a run (``sci_diffusion.restart``): with the exact denoiser it keeps the analytic
mixture; it undoes most of a coarse first pass's error; the forward jump is the forward process (zero centre of
mass, categorical rows drawn from theirs); its grids start at ``t_max``; it costs ``count * steps`` passes."""
import pytest
import torch

from sci_diffusion.gaussian_mixture import GaussianMixture, sliced_wasserstein
from sci_diffusion.restart import Restarts, forward_jump
from sci_diffusion.samplers import get_sampler, sampler_times
from sci_diffusion.schedules import NoiseSchedule
from sci_diffusion.state_spaces import EuclideanSpace, ZeroCoMSpace
from sci_diffusion.time_grids import time_grid

from .bond_state import bond_state

N = 20000
GMM = GaussianMixture.default_2d()
SCHEDULE = NoiseSchedule.from_name("polynomial_2", 1000)
SPACE = EuclideanSpace()


def draw(steps: int, restarts: Restarts | None, seed: int = 0, n: int = N) -> torch.Tensor:
    """``n`` points of the mixture by ``dpmpp2m_sde`` on its own grid of ``steps``, then ``restarts``."""
    sample = get_sampler("dpmpp2m_sde")
    if restarts is not None:
        sample = restarts.wrap(sample, SCHEDULE, "quadratic")
    g = torch.Generator().manual_seed(seed)
    x_T = SPACE.noise(torch.zeros(n, 2, dtype=torch.float64), g)
    return sample(GMM.exact_denoiser(SCHEDULE), x_T, SCHEDULE, sampler_times("dpmpp2m_sde", SCHEDULE, steps), SPACE,
                  generator=g)


@pytest.fixture(scope="module")
def reference():
    return GMM.sample(N, torch.Generator().manual_seed(1))


def test_restarts_with_the_exact_denoiser_keep_the_mixture(reference):
    """The forward jump and an exact way back leave the data distribution where it is: after 3 restarts from 0.5
    the points are as close to exact draws as the plain run's (two exact draws differ by about 0.028)."""
    plain = sliced_wasserstein(draw(50, None), reference)
    restarted = sliced_wasserstein(draw(50, Restarts(count=3, t_max=0.5, steps=25)), reference)
    assert plain < 0.05 and restarted < 0.05, (plain, restarted)


def test_restarts_undo_most_of_a_coarse_first_pass(reference):
    """Two sampler steps leave the mixture far off; restarts from 0.6 with 25 steps each bring it back near exact
    draws (a tenth of the distance), since the forward noise contracts the first pass's error (Xu et al.'s argument)."""
    coarse = sliced_wasserstein(draw(2, None, n=5000), reference[:5000])
    restarted = sliced_wasserstein(draw(2, Restarts(count=3, t_max=0.6, steps=25), n=5000), reference[:5000])
    assert coarse > 1.0 and restarted < 0.1 * coarse, (coarse, restarted)  # 1.24 and 0.04 (no jump noise: 0.47)


def test_the_forward_jump_is_the_forward_process_on_every_part_of_the_state():
    """Gaussian rows: mean ``alpha x0`` and standard deviation ``sigma`` (zero centre of mass kept); categorical rows:
    one-hot draws from ``q(x_t | x_0)``, which at a small time keep most classes."""
    t = 0.4
    alpha, sigma = float(SCHEDULE.alpha(torch.tensor(t))), float(SCHEDULE.sigma(torch.tensor(t)))
    x0 = torch.full((200000, 2), 3.0, dtype=torch.float64)
    x_t = forward_jump(x0, SCHEDULE, t, SPACE, torch.Generator().manual_seed(0))
    assert torch.allclose(x_t.mean(0), torch.full((2,), alpha * 3.0, dtype=torch.float64), atol=0.01)
    assert torch.allclose(x_t.std(0), torch.full((2,), sigma, dtype=torch.float64), atol=0.01)

    space = ZeroCoMSpace(batch=torch.tensor([0, 0, 0, 1, 1]), num_samples=2)
    moved = forward_jump(torch.randn(5, 3, dtype=torch.float64), SCHEDULE, t, space, torch.Generator().manual_seed(0))
    assert torch.allclose(space.centre_of_mass(moved), torch.zeros(2, 3, dtype=torch.float64), atol=1e-12)

    stacked, x_noise, probs, _ = bond_state(SCHEDULE, samples=400)
    clean = torch.cat([x_noise[:400], torch.nn.functional.one_hot(probs.argmax(1), 3).float()])
    jumped = forward_jump(clean, SCHEDULE, 0.05, stacked, torch.Generator().manual_seed(0))[400:]
    assert torch.equal(jumped.sum(1), torch.ones(400)) and set(jumped.unique().tolist()) == {0.0, 1.0}
    assert (jumped.argmax(1) == probs.argmax(1)).float().mean() > 0.9


def test_each_restart_runs_its_own_grid_from_t_max_and_costs_its_steps():
    calls = []

    def denoiser(x, t, cond=None):
        calls.append(float(t))
        return 0.5 * x

    restarts = Restarts(count=2, t_max=0.15, steps=4)
    sample = restarts.wrap(get_sampler("ddpm"), SCHEDULE, "uniform")
    sample(denoiser, torch.zeros(3, 2), SCHEDULE, time_grid(SCHEDULE, 5), SPACE, generator=torch.Generator())
    back = time_grid(SCHEDULE, 4, "uniform", start=0.15)
    assert len(calls) == 5 + restarts.function_evaluations() == 13
    assert calls[5:9] == calls[9:] == pytest.approx(back[:-1].tolist())
    assert back[0] == 0.15 and back[-1] == 0 and back[-2] == pytest.approx(1 / SCHEDULE.T)


def test_bad_restart_settings_are_refused_in_one_sentence():
    with pytest.raises(ValueError, match="whole number >= 0"):
        Restarts(count=-1)
    with pytest.raises(ValueError, match=r"time in \(0, 1\]"):
        Restarts(t_max=1.5)
    with pytest.raises(ValueError, match=r"starts in \(1/T, 1\]"):
        Restarts(t_max=0.0005).wrap(get_sampler("ddpm"), SCHEDULE, "uniform")
