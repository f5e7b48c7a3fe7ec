"""Every sampler, fed the exact denoiser of a Gaussian mixture, must reproduce the mixture."""
import pytest
import torch

from sci_diffusion.gaussian_mixture import GaussianMixture, mixture_statistics, sliced_wasserstein
from sci_diffusion.samplers import SAMPLERS, function_evaluations, sampler_times
from sci_diffusion.schedules import NoiseSchedule
from sci_diffusion.state_spaces import EuclideanSpace
from sci_diffusion.time_grids import time_grid

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
    return SAMPLERS[name](GMM.exact_denoiser(SCHEDULE), x_T, SCHEDULE, sampler_times(name, SCHEDULE, steps), SPACE, generator=g,
                          **kw)


# 50 steps for the ODE solvers, 200 for the stochastic ones (DDPM's coarse steps shrink variance).
STEPS = {"ddpm": 200, "ddim": 50, "dpmpp2m": 50, "dpmpp2m_sde": 50, "heun": 50, "pc": 100}


# Thresholds from seeds 0-3 of every sampler at these step counts (2026-11-27): the largest errors
# seen were weights 0.0079 (ddpm), means 0.0314 (ddim), covariances 0.0144 (pc), sliced W2 0.0457
# (ddim; two exact draws differ by up to 0.028). Each threshold sits 1.3-1.9x above its maximum.
THRESHOLDS = {"weights": 0.015, "means": 0.045, "covs": 0.025, "sliced_w2": 0.06}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_reproduces_mixture_weights_means_and_covariances(name, reference):
    x = run(name, STEPS[name])
    stats, truth = mixture_statistics(GMM, x), mixture_statistics(GMM, reference)
    for key in ("weights", "means", "covs"):  # relative to the true mixture
        reference_value = getattr(GMM, key)
        assert torch.allclose(stats[key], reference_value, atol=THRESHOLDS[key]), (key, stats[key] - reference_value)
    assert torch.allclose(truth["covs"], GMM.covs, atol=0.01)  # the exact samples' statistics as a sanity anchor
    assert sliced_wasserstein(x, reference) < THRESHOLDS["sliced_w2"]


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


STOCHASTIC = {"ddpm", "dpmpp2m_sde", "pc"}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_sampler_draws_its_noise_from_its_generator_and_nowhere_else(name):
    """Same x_T, same generator: identical. Same x_T, another generator: a stochastic sampler moves,
    a deterministic one does not (so a sampler that ignored its generator, or drew from the global
    RNG, fails here; different x_T would hide both)."""
    x_T = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(9))

    def draw(seed, global_seed):
        torch.manual_seed(global_seed)  # the global RNG must not matter
        return SAMPLERS[name](GMM.exact_denoiser(SCHEDULE), x_T, SCHEDULE, sampler_times(name, SCHEDULE, 6), SPACE,
                              generator=torch.Generator().manual_seed(seed))

    a, b, c = draw(3, 100), draw(3, 200), draw(4, 100)
    assert torch.equal(a, b)
    if name in STOCHASTIC:
        assert (a - c).abs().mean() > 1e-2
    else:
        assert torch.equal(a, c)


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("steps", [1, 2, 37])
def test_function_evaluations_counts_the_denoiser_calls(name, steps):
    calls = []

    def spy(x, t, cond=None):
        calls.append(float(t))
        return GMM.exact_denoiser(SCHEDULE)(x, t)

    SAMPLERS[name](spy, torch.randn(10, 2, dtype=torch.float64), SCHEDULE, sampler_times(name, SCHEDULE, steps), SPACE,
                   generator=torch.Generator().manual_seed(0))
    assert len(calls) == function_evaluations(name, steps)
    assert all(0 < t <= 1 for t in calls)  # never at t = 0, where sigma = 0


def test_step_count_is_independent_of_training_T():
    """A 37-step DDIM run on a T = 1000 schedule calls the denoiser 37 times at decreasing times."""
    times = []

    def spy(x, t, cond=None):
        times.append(float(t))
        return GMM.exact_denoiser(SCHEDULE)(x, t)

    SAMPLERS["ddim"](spy, torch.randn(10, 2, dtype=torch.float64), SCHEDULE, sampler_times("ddim", SCHEDULE, 37), SPACE)
    assert len(times) == 37
    assert all(a > b for a, b in zip(times, times[1:]))


def karras_heun(denoise_ve, x, sigmas):
    """k-diffusion's ``sample_heun`` (Karras et al. 2022, Algorithm 1 with S_churn = 0), written out
    independently: variance-exploding ``x`` and a denoiser ``D(x, sigma)``. k-diffusion's grid ends
    with an appended sigma = 0 and takes an Euler step onto it, as ours does at t = 0."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_ve(x, sigma)
        d = (x - denoised) / sigma
        dt = sigma_next - sigma
        if i == len(sigmas) - 2:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - denoise_ve(x_2, sigma_next)) / sigma_next
            x = x + (d + d_2) / 2 * dt
    return x


@pytest.mark.parametrize("steps", [5, 18])
def test_heun_follows_karras_algorithm_on_the_same_grid(steps):
    """Heun in our VP variables against k-diffusion's VE form, both fed the exact mixture denoiser
    on one time grid: they must agree to float64 rounding, which a missing correction cannot."""
    times = time_grid(SCHEDULE, steps, "logsnr")
    x_T = torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = SAMPLERS["heun"](GMM.exact_denoiser(SCHEDULE), x_T, SCHEDULE, times, SPACE)
    exact = GMM.exact_denoiser(SCHEDULE)
    sigmas = [float(SCHEDULE.sigma_ve(t)) for t in times[:-1]] + [0.0]  # k-diffusion's grids end at sigma = 0
    sigma_of_t = dict(zip(sigmas, times))

    def denoise_ve(x, sigma):  # D(x_ve; sigma) = the VP denoiser at x_vp = alpha x_ve
        t = sigma_of_t[float(sigma)]
        return exact(x * SCHEDULE.alpha(t), t.float())  # samplers hand the network t in float32

    x_ve = x_T / float(SCHEDULE.alpha(times[0]))
    reference = karras_heun(denoise_ve, x_ve, sigmas)  # at sigma = 0, x_ve is the data
    torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-9)
    euler_only = karras_heun(lambda x, s: denoise_ve(x, s), x_ve, [sigmas[0], sigmas[-1]])
    assert (ours - euler_only).abs().max() > 1e-3  # the comparison can tell a sampler without correction


class ScriptedSpace(EuclideanSpace):
    """A Euclidean space whose noise comes from a script, so one sampler step can be computed by hand."""

    def __init__(self, script):
        super().__init__()
        self.script = list(script)

    def noise(self, like, generator=None):
        return self.script.pop(0)


def test_one_predictor_corrector_step_is_song_et_al_langevin_update():
    """Two steps of ``pc`` (1 -> t_1 -> 0) with scripted noise: the predictor is the ancestral step
    and the corrector one Langevin step at t_1 with Song et al.'s step size (the score at its noise-level
    norm); computed here by hand."""
    x_T = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z_pred, z_corr = (torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
                      for s in (1, 2))
    grid = torch.tensor([1.0, 0.4, 0.0], dtype=torch.float64)
    D = GMM.exact_denoiser(SCHEDULE)
    out = SAMPLERS["pc"](D, x_T, SCHEDULE, grid, ScriptedSpace([z_pred, z_corr]), snr=0.16)

    a = lambda t: float(SCHEDULE.alpha(torch.tensor(t, dtype=torch.float64)))  # noqa: E731
    s = lambda t: float(SCHEDULE.sigma(torch.tensor(t, dtype=torch.float64)))  # noqa: E731
    def posterior_mean(x, x0, t, u):  # q(x_u | x_t, x0), Ho et al. (2020) eq. 7 in alpha/sigma form
        a_tu = a(t) / a(u)
        var_tu = s(t) ** 2 - a_tu ** 2 * s(u) ** 2
        return (a_tu * s(u) ** 2 / s(t) ** 2) * x + (a(u) * var_tu / s(t) ** 2) * x0, var_tu * s(u) ** 2 / s(t) ** 2

    f32 = lambda t: torch.tensor(t, dtype=torch.float32)  # noqa: E731  (samplers hand networks t in float32)
    mean, var = posterior_mean(x_T, D(x_T, f32(1.0)), 1.0, 0.4)
    x = mean + var ** 0.5 * z_pred
    # Langevin at u = 0.4: score = -(x - alpha x0_hat) / sigma^2, step 2 (alpha_bar_t / alpha_bar_u) (snr |z| / |score|)^2
    # with |score| at its noise-level value |z| / sigma_u
    score = -(x - a(0.4) * D(x, f32(0.4))) / s(0.4) ** 2
    eps = 2 * (a(1.0) ** 2 / a(0.4) ** 2) * (0.16 * s(0.4)) ** 2
    x = x + eps * score + (2 * eps) ** 0.5 * z_corr
    expected = D(x, f32(0.4))  # the last step, onto t = 0 (sigma = 0), returns the data estimate
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_float32_sampling_recovers_the_mixture_too(name, reference):
    """The networks sample in float32: the same statistics must hold there, not only in float64."""
    g = torch.Generator().manual_seed(0)
    x_T = SPACE.noise(torch.zeros(N, 2, dtype=torch.float32), g)
    denoiser = GMM.exact_denoiser(SCHEDULE)
    x = SAMPLERS[name](lambda x, t, c=None: denoiser(x.double(), t).float(), x_T, SCHEDULE,
                       sampler_times(name, SCHEDULE, STEPS[name]), SPACE,
                       generator=g)
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    assert sliced_wasserstein(x.double(), reference) < THRESHOLDS["sliced_w2"]


def test_callback_reports_every_intermediate_state_and_progress_bar_runs(capsys):
    seen = []
    x = SAMPLERS["dpmpp2m"](GMM.exact_denoiser(SCHEDULE), torch.randn(50, 2, dtype=torch.float64), SCHEDULE,
                            sampler_times("dpmpp2m", SCHEDULE, 8), SPACE,
                            progress=True, callback=lambda i, t, xt, x0: seen.append((i, t, xt.clone())))
    assert [s[0] for s in seen] == list(range(8))
    assert seen[-1][1] == 0.0 and torch.equal(seen[-1][2], x)
    assert "dpmpp2m" in capsys.readouterr().err


def test_explicit_time_grid_is_accepted():
    grid = torch.tensor([1.0, 0.6, 0.3, 0.1, 0.0], dtype=torch.float64)
    x = SAMPLERS["ddim"](GMM.exact_denoiser(SCHEDULE), torch.randn(10, 2, dtype=torch.float64), SCHEDULE, grid, SPACE)
    assert x.shape == (10, 2) and torch.isfinite(x).all()


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_sampler_steps_through_exactly_the_grid_it_is_given(name):
    """The grid is built outside the sampler (k-diffusion's ``sigmas``, EDM's ``t_steps``): a sampler evaluates
    the denoiser at the grid's times, in order, and reports each step's end time, nothing of its own."""
    grid = torch.tensor([1.0, 0.7, 0.45, 0.2, 0.0], dtype=torch.float64)
    asked, ends = [], []

    def spy(x, t, cond=None):
        asked.append(float(t))
        return GMM.exact_denoiser(SCHEDULE)(x, t)

    SAMPLERS[name](spy, torch.randn(10, 2, dtype=torch.float64), SCHEDULE, grid, SPACE,
                   generator=torch.Generator().manual_seed(0), callback=lambda i, t, x, x0: ends.append(t))
    assert ends == grid[1:].tolist()
    # every grid time but the last (0: the data itself) is asked, in decreasing order, and no other time
    # (heun and pc evaluate a second time at a step's end, which is the next grid time)
    assert sorted(set(asked), reverse=True) == grid[:-1].float().tolist() and asked == sorted(asked, reverse=True)


def test_a_step_count_where_a_grid_belongs_is_one_sentence():
    with pytest.raises(TypeError, match="takes a time grid"):
        SAMPLERS["ddim"](GMM.exact_denoiser(SCHEDULE), torch.randn(4, 2, dtype=torch.float64), SCHEDULE, 10, SPACE)
