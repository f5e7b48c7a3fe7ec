"""The rectified-flow path (``paths.py``) read through the core as a schedule is: its coefficients, DDIM as
Euler on the flow ODE, every sampler that can serve it recovering the analytic mixture from its exact x0
denoiser, the one that cannot refusing, the log-SNR grid, and the loss on the path with and without a
noise-data coupling."""
import pytest
import torch

from sci_diffusion.gaussian_mixture import GaussianMixture, mixture_statistics, sliced_wasserstein
from sci_diffusion.losses import DenoisingLoss
from sci_diffusion.module import DiffusionBatch
from sci_diffusion.paths import PATH_NAMES, RectifiedFlowPath, noise_path
from sci_diffusion.samplers import SAMPLERS, sampler_times
from sci_diffusion.schedules import NoiseSchedule
from sci_diffusion.state_spaces import EuclideanSpace
from sci_diffusion.time_grids import time_grid
from sci_diffusion.toy import MixtureDiffusion

N = 20000
GMM = GaussianMixture.default_2d()
PATH = RectifiedFlowPath(1000)
SPACE = EuclideanSpace()
# the VP tests' step counts and thresholds (test_samplers_gmm.py). On this path, seeds 0-3, the largest errors
# were weights 0.0083, means 0.034 (ddim), covariances 0.014 (pc), sliced W2 0.046 (ddim): 1.3-1.8x below.
STEPS = {"ddpm": 200, "ddim": 50, "dpmpp2m": 50, "dpmpp2m_sde": 50, "pc": 100}
THRESHOLDS = {"weights": 0.015, "means": 0.045, "covs": 0.025, "sliced_w2": 0.06}


@pytest.fixture(scope="module")
def reference():
    return GMM.sample(N, torch.Generator().manual_seed(1))


def test_the_path_is_linear_from_data_to_noise():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(PATH.alpha(t), 1 - t)
    torch.testing.assert_close(PATH.sigma(t), t)
    assert float(PATH.alpha(1.0)) == 0.0 and float(PATH.sigma(0.0)) == 0.0  # pure noise at t = 1, data at 0
    lam = PATH.log_snr(t[1:-1])
    torch.testing.assert_close(lam, torch.log((1 - t[1:-1]) / t[1:-1]))
    assert torch.all(lam[1:] < lam[:-1])
    torch.testing.assert_close(PATH.t_from_log_snr(lam), t[1:-1])
    assert float(PATH.log_snr(1.0)) == float("-inf") and float(PATH.log_snr(0.0)) == float("inf")


def test_a_model_names_the_path_by_name_and_a_wrong_name_is_one_sentence():
    assert isinstance(noise_path("rectified_flow", 50), RectifiedFlowPath) and noise_path("rectified_flow", 50).T == 50
    assert isinstance(noise_path("cosine", 50), NoiseSchedule)
    with pytest.raises(ValueError, match="rectified_flow"):
        noise_path("rectified", 50)
    assert "rectified_flow" in PATH_NAMES


def run(name, steps, seed=0, **options):
    g = torch.Generator().manual_seed(seed)
    x_T = SPACE.noise(torch.zeros(N, 2, dtype=torch.float64), g)
    return SAMPLERS[name](GMM.exact_denoiser(PATH), x_T, PATH, sampler_times(name, PATH, steps), SPACE, generator=g,
                          **options)


def test_ddim_is_euler_on_the_flow_ode():
    """DDIM with an x0 denoiser D on this path is Euler on dx/dt = (x - D(x, t)) / t, written out here."""
    grid = time_grid(PATH, 12, "uniform")
    x_T = torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    denoise = GMM.exact_denoiser(PATH)
    x = x_T
    for t, s in zip(grid[:-1], grid[1:]):
        velocity = (x - denoise(x, t.float())) / t  # eps_hat - x0_hat
        x = x + (s - t) * velocity
    torch.testing.assert_close(SAMPLERS["ddim"](denoise, x_T, PATH, grid, SPACE), x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(STEPS))
def test_every_sampler_but_heun_recovers_the_mixture_on_the_flow_path(name, reference):
    x = run(name, STEPS[name])
    stats = mixture_statistics(GMM, x)
    for key in ("weights", "means", "covs"):
        assert torch.allclose(stats[key], getattr(GMM, key), atol=THRESHOLDS[key]), (key, stats[key] - getattr(GMM, key))
    assert sliced_wasserstein(x, reference) < THRESHOLDS["sliced_w2"]


def test_ddim_with_eta_1_is_the_ancestral_sampler_on_the_flow_path_too():
    """DDIM's eta noise is eta times the ancestral step's standard deviation on any Gaussian path (Song et al.'s
    VP formula gives another, wrong, value here): with eta = 1 and one generator, DDIM and DDPM agree."""
    x_T = torch.randn(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grid = time_grid(PATH, 15, "uniform")
    ddim, ddpm = (SAMPLERS[name](GMM.exact_denoiser(PATH), x_T, PATH, grid, SPACE, generator=torch.Generator().manual_seed(4),
                                 **options) for name, options in (("ddim", {"eta": 1.0}), ("ddpm", {})))
    torch.testing.assert_close(ddim, ddpm, rtol=1e-9, atol=1e-9)


def test_the_ode_with_few_steps_is_worse_than_with_many(reference):
    assert sliced_wasserstein(run("ddim", 5), reference) > 2 * sliced_wasserstein(run("ddim", 100), reference)


def test_heun_refuses_the_flow_path_in_one_sentence():
    with pytest.raises(ValueError, match="heun integrates x / alpha.*use ddim"):
        run("heun", 10)


def test_the_log_snr_grid_of_the_flow_path_is_finite_and_uniform_in_lambda_after_its_start():
    """lambda(1) = -inf: the grid starts at 1 and is uniform in lambda from lambda(1 - 1/T) to lambda(1/T)."""
    grid = time_grid(PATH, 20, "logsnr")
    assert grid[0] == 1.0 and grid[-1] == 0.0 and torch.all(grid[1:] < grid[:-1]) and torch.isfinite(grid).all()
    lam = PATH.log_snr(torch.cat([torch.tensor([1 - 1 / PATH.T], dtype=torch.float64), grid[1:-1]]))
    torch.testing.assert_close(lam.diff(), torch.full_like(lam.diff(), float(lam.diff()[0])))
    torch.testing.assert_close(lam[-1], PATH.log_snr(1 / PATH.T))


class OracleX0(torch.nn.Module):
    """Answers the clean data it was given, whatever it sees."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x_t, t, cond=None, context=None):
        return self.x0


def test_the_flow_loss_noises_linearly_and_an_oracle_scores_zero():
    x0 = torch.randn(512, 3, dtype=torch.float64)
    loss = DenoisingLoss(PATH, "x0")
    batch = DiffusionBatch(x0, SPACE)
    noised = loss.noise(batch, torch.Generator().manual_seed(0))
    t = noised.t[:, None]
    torch.testing.assert_close(noised.x_t, (1 - t) * x0 + t * noised.eps)
    assert float(loss(OracleX0(x0), batch, torch.Generator().manual_seed(0))) == 0.0
    assert float(loss(OracleX0(x0 + 0.1), batch, torch.Generator().manual_seed(0))) == pytest.approx(0.01)
    at_noise = DenoisingLoss(RectifiedFlowPath(1), "x0").noise(batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(at_noise.x_t, at_noise.eps)  # t = 1 is pure noise


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_a_flow_model_that_predicts_other_than_x0_is_refused_in_one_sentence(prediction):
    with pytest.raises(ValueError, match="rectified-flow path trains an x0-predicting network"):
        MixtureDiffusion(schedule="rectified_flow", prediction=prediction)
    assert MixtureDiffusion(schedule="rectified_flow", prediction="x0").schedule.name == "rectified_flow"


def reversed_rows(eps, x0, batch):
    """A coupling for the test: the noise rows in reverse order."""
    return eps.flip(0)


def test_a_coupling_changes_the_noise_and_never_the_data():
    """The loss's coupling sees the independent draw and the data; x_t is built from what it returns, and the
    batch's data is left as it was. Without a coupling the draw is the independent one."""
    x0 = torch.randn(64, 3, dtype=torch.float64)
    kept = x0.clone()
    batch = DiffusionBatch(x0, SPACE)
    plain = DenoisingLoss(PATH, "x0").noise(batch, torch.Generator().manual_seed(0))
    coupled = DenoisingLoss(PATH, "x0", coupling=reversed_rows).noise(batch, torch.Generator().manual_seed(0))
    assert torch.equal(coupled.t, plain.t)
    torch.testing.assert_close(coupled.eps, plain.eps.flip(0))
    assert not torch.allclose(coupled.eps, plain.eps)
    torch.testing.assert_close(coupled.x_t, coupled.alpha * x0 + coupled.sigma * coupled.eps)
    assert torch.equal(batch.x0, kept)
    assert DenoisingLoss(PATH, "x0").coupling is None
