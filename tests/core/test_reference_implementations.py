"""Given identical model outputs, our steps match diffusers' and MONAI's schedulers.

Index convention: diffusers/MONAI step ``k = 0..T-1`` is our ``t = (k + 1) / T``; their
"final alpha = 1" is our ``t = 0``.
"""
import pytest
import torch

from sci_diffusion.denoiser import PredictionDenoiser
from sci_diffusion.samplers import ddim, ddim_step, ddpm_step, dpmpp2m, dpmpp2m_sde
from sci_diffusion.schedules import NoiseSchedule
from sci_diffusion.state_spaces import EuclideanSpace

T = 1000


def fake_eps_network(x, k):
    """A fixed, nonlinear 'model output' depending on the sample and the integer step."""
    return torch.tanh(0.7 * x + 0.001 * float(k)) * (1 + 0.0003 * float(k))


def as_our_net(x, t, cond=None):
    return fake_eps_network(x, round(float(t) * T) - 1)


def our_grid(timesteps):
    return torch.tensor([(int(k) + 1) / T for k in timesteps] + [0.0], dtype=torch.float64)


def test_ddim_trajectory_matches_diffusers_ddim_scheduler():
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=False, set_alpha_to_one=True)
    ref.set_timesteps(25)
    schedule = NoiseSchedule.from_alphas_cumprod(ref.alphas_cumprod)
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x_T.clone()
    for k in ref.timesteps:
        x = ref.step(fake_eps_network(x, int(k)), int(k), x, eta=0.0).prev_sample
    ours = ddim(PredictionDenoiser(as_our_net, schedule, "eps"), x_T, schedule, our_grid(ref.timesteps), EuclideanSpace())
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=1e-5)


def test_stochastic_ddim_step_matches_diffusers_with_the_same_noise():
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=False)
    ref.set_timesteps(10)
    schedule = NoiseSchedule.from_alphas_cumprod(ref.alphas_cumprod)
    g = torch.Generator().manual_seed(1)
    x, noise = torch.randn(32, 3, generator=g, dtype=torch.float64), torch.randn(32, 3, generator=g, dtype=torch.float64)
    k, k_prev = int(ref.timesteps[3]), int(ref.timesteps[4])
    expected = ref.step(fake_eps_network(x, k), k, x, eta=0.8, variance_noise=noise).prev_sample
    t, s = (k + 1) / T, (k_prev + 1) / T
    a_t, s_t = float(schedule.alpha(t)), float(schedule.sigma(t))
    a_s, s_s = float(schedule.alpha(s)), float(schedule.sigma(s))
    x0 = (x - s_t * fake_eps_network(x, k)) / a_t
    torch.testing.assert_close(ddim_step(x, x0, a_t, s_t, a_s, s_s, 0.8, noise), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("steps", [8, 20])
def test_dpm_solver_pp_2m_trajectory_matches_diffusers(steps):
    from diffusers import DPMSolverMultistepScheduler

    ref = DPMSolverMultistepScheduler(num_train_timesteps=T, beta_schedule="linear", algorithm_type="dpmsolver++",
                                      solver_order=2, prediction_type="epsilon", final_sigmas_type="zero",
                                      timestep_spacing="linspace")
    ref.set_timesteps(steps)
    schedule = NoiseSchedule.from_alphas_cumprod(ref.alphas_cumprod)
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x_T.clone()
    for k in ref.timesteps:
        x = ref.step(fake_eps_network(x, int(k)), int(k), x).prev_sample
    ours = dpmpp2m(PredictionDenoiser(as_our_net, schedule, "eps"), x_T, schedule, our_grid(ref.timesteps),
                   EuclideanSpace())
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=1e-5)


class ScriptedNoiseSpace(EuclideanSpace):
    """Euclidean space whose noise comes from a fixed list, so a stochastic sampler can be compared
    step by step with a reference fed the same noise."""

    def __init__(self, draws):
        super().__init__()
        self.draws = list(draws)

    def noise(self, like, generator=None):
        return self.draws.pop(0)


@pytest.mark.parametrize("steps", [8, 20])
def test_sde_dpm_solver_pp_2m_trajectory_matches_diffusers_with_the_same_noise(steps):
    from diffusers import DPMSolverMultistepScheduler

    ref = DPMSolverMultistepScheduler(num_train_timesteps=T, beta_schedule="linear", algorithm_type="sde-dpmsolver++",
                                      solver_order=2, solver_type="midpoint", prediction_type="epsilon",
                                      final_sigmas_type="zero", timestep_spacing="linspace")
    ref.set_timesteps(steps)
    schedule = NoiseSchedule.from_alphas_cumprod(ref.alphas_cumprod)
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(64, 3, generator=g, dtype=torch.float64)
    draws = [torch.randn(64, 3, generator=g, dtype=torch.float64) for _ in ref.timesteps]
    x = x_T.clone()
    for k, z in zip(ref.timesteps, draws):
        x = ref.step(fake_eps_network(x, int(k)), int(k), x, variance_noise=z).prev_sample
    ours = dpmpp2m_sde(PredictionDenoiser(as_our_net, schedule, "eps"), x_T, schedule, our_grid(ref.timesteps),
                       ScriptedNoiseSpace(draws))
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=1e-5)
    assert (ours - dpmpp2m(PredictionDenoiser(as_our_net, schedule, "eps"), x_T, schedule, our_grid(ref.timesteps),
                           EuclideanSpace())).abs().max() > 1e-2  # the noise really enters


@pytest.mark.parametrize("k", [999, 500, 17, 1])
def test_ddpm_posterior_step_matches_monai_ddpm_scheduler(k):
    from monai.networks.schedulers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=T, schedule="linear_beta", clip_sample=False)
    schedule = NoiseSchedule.from_alphas_cumprod(ref.alphas_cumprod)
    x = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    eps = fake_eps_network(x, k)
    expected, x0_ref = ref.step(eps, k, x, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    t, s = (k + 1) / T, k / T
    a_t, s_t = float(schedule.alpha(t)), float(schedule.sigma(t))
    a_s, s_s = float(schedule.alpha(s)), float(schedule.sigma(s))
    x0 = (x - s_t * eps) / a_t
    torch.testing.assert_close(x0, x0_ref, atol=1e-5, rtol=1e-5)
    # MONAI forms 1 - alpha_bar in float32: at k = 1 that is ~3e-4 with a relative rounding error of
    # ~2e-4, which its coefficients inherit. Elsewhere the agreement is 1e-5.
    tol = 5e-4 if k == 1 else 1e-5
    torch.testing.assert_close(ddpm_step(x, x0, a_t, s_t, a_s, s_s, noise), expected, atol=tol, rtol=tol)
