"""Every sampler, fed the exact denoiser of a Gaussian mixture, must reproduce the mixture."""
import pytest
import torch

from sci_diffusion.gaussian_mixture import GaussianMixture, mixture_statistics, sliced_wasserstein
from sci_diffusion.samplers import SAMPLERS, function_evaluations
from sci_diffusion.schedules import NoiseSchedule
from sci_diffusion.state_spaces import EuclideanSpace

N = 20000
GMM = GaussianMixture.default_2d()
SCHEDULE = NoiseSchedule.from_name("polynomial_2", 1000)
SPACE = EuclideanSpace()


@pytest.fixture(scope="module")
def reference():
    return GMM.sample(N, torch.Generator().manual_seed(1))


def run(name, steps, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    x_T = SPACE.noise(torch.zeros(N, 2, dtype=torch.float64), g)
    return SAMPLERS[name](GMM.exact_denoiser(SCHEDULE), x_T, SCHEDULE, steps, SPACE, generator=g, **kw)


# 50 steps for the ODE solvers, 200 for the stochastic ones (DDPM's coarse steps shrink variance).
STEPS = {"ddpm": 200, "ddim": 50, "dpmpp2m": 50, "dpmpp2m_sde": 50, "heun": 50, "pc": 100}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_reproduces_mixture_weights_means_and_covariances(name, reference):
    x = run(name, STEPS[name])
    stats, truth = mixture_statistics(GMM, x), mixture_statistics(GMM, reference)
    assert torch.allclose(stats["weights"], GMM.weights, atol=0.015)
    assert torch.allclose(stats["means"], GMM.means, atol=0.03)
    # relative to the true covariances, with the exact-sample statistics as a sanity anchor
    assert torch.allclose(stats["covs"], GMM.covs, atol=0.025)
    assert torch.allclose(truth["covs"], GMM.covs, atol=0.01)
    assert sliced_wasserstein(x, reference) < 0.06


def test_dpm_solver_20_steps_is_about_as_good_as_ddpm_1000(reference):
    floor = sliced_wasserstein(GMM.sample(N, torch.Generator().manual_seed(2)), reference)
    d_ddpm = sliced_wasserstein(run("ddpm", 1000), reference)
    d_dpm = sliced_wasserstein(run("dpmpp2m", 20), reference)
    assert d_ddpm < 3 * floor + 0.02
    assert d_dpm < d_ddpm + 0.02, (d_dpm, d_ddpm)
    # ... while DDIM with 20 steps is measurably worse than DPM-Solver++ with 20
    assert sliced_wasserstein(run("ddim", 20), reference) > d_dpm


def test_few_steps_are_worse_than_many(reference):
    assert sliced_wasserstein(run("ddim", 5), reference) > 2 * sliced_wasserstein(run("ddim", 100), reference)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_is_deterministic_given_a_generator(name):
    a, b = run(name, 5, seed=3)[:100], run(name, 5, seed=3)[:100]
    assert torch.equal(a, b)
    if name in ("ddpm", "pc"):
        assert not torch.equal(a, run(name, 5, seed=4)[:100])


def test_step_count_is_independent_of_training_T():
    """A 37-step run on a T = 1000 schedule calls the denoiser 37 times at decreasing times."""
    times = []

    def spy(x, t, cond=None):
        times.append(float(t))
        return GMM.exact_denoiser(SCHEDULE)(x, t)

    SAMPLERS["ddim"](spy, torch.randn(10, 2, dtype=torch.float64), SCHEDULE, 37, SPACE)
    assert len(times) == 37 == function_evaluations("ddim", 37)
    assert all(a > b for a, b in zip(times, times[1:]))


def test_callback_reports_every_intermediate_state_and_progress_bar_runs(capsys):
    seen = []
    x = SAMPLERS["dpmpp2m"](GMM.exact_denoiser(SCHEDULE), torch.randn(50, 2, dtype=torch.float64), SCHEDULE, 8, SPACE,
                            progress=True, callback=lambda i, t, xt, x0: seen.append((i, t, xt.clone())))
    assert [s[0] for s in seen] == list(range(8))
    assert seen[-1][1] == 0.0 and torch.equal(seen[-1][2], x)
    assert "dpmpp2m" in capsys.readouterr().err


def test_explicit_time_grid_is_accepted():
    grid = torch.tensor([1.0, 0.6, 0.3, 0.1, 0.0], dtype=torch.float64)
    x = SAMPLERS["ddim"](GMM.exact_denoiser(SCHEDULE), torch.randn(10, 2, dtype=torch.float64), SCHEDULE, grid, SPACE)
    assert x.shape == (10, 2) and torch.isfinite(x).all()
