"""Classifier-free and property-gradient guidance wrap a denoiser into a denoiser."""
import pytest
import torch

from sci_diffusion.gaussian_mixture import GaussianMixture
from sci_diffusion.guidance import ClassifierFreeGuidance, PropertyGradientGuidance
from sci_diffusion.samplers import dpmpp2m, sampler_times
from sci_diffusion.schedules import NoiseSchedule
from sci_diffusion.state_spaces import EuclideanSpace, ZeroCoMSpace


def conditional_denoiser(x, t, cond):
    """x0 estimate that depends on the condition: cond shifts it, None means unconditional."""
    return 0.5 * x + (0.0 if cond is None else cond)


def test_cfg_scale_one_is_the_conditional_prediction_and_zero_the_unconditional():
    x, t, c = torch.randn(5, 2), torch.tensor(0.5), torch.full((5, 2), 3.0)
    assert torch.equal(ClassifierFreeGuidance(conditional_denoiser, 1.0)(x, t, c), conditional_denoiser(x, t, c))
    assert torch.equal(ClassifierFreeGuidance(conditional_denoiser, 0.0)(x, t, c), conditional_denoiser(x, t, None))


def test_cfg_scale_above_one_extrapolates_past_the_conditional():
    x, t, c = torch.randn(5, 2), torch.tensor(0.5), torch.full((5, 2), 3.0)
    out = ClassifierFreeGuidance(conditional_denoiser, 2.0)(x, t, c)
    torch.testing.assert_close(out, conditional_denoiser(x, t, None) + 2 * c)


def test_cfg_in_a_limited_interval_guides_inside_it_and_is_the_conditional_model_outside():
    x, c = torch.randn(5, 2), torch.full((5, 2), 3.0)
    calls = []

    def counted(x_t, t, cond):
        calls.append(cond is None)
        return conditional_denoiser(x_t, t, cond)

    cfg = ClassifierFreeGuidance(counted, 2.0, interval=(0.0, 0.3))
    torch.testing.assert_close(cfg(x, torch.tensor(0.3), c), conditional_denoiser(x, None, None) + 2 * c)
    assert calls == [False, True]  # both passes inside (the bound belongs to the interval)
    calls.clear()
    assert torch.equal(cfg(x, torch.tensor(0.31), c), conditional_denoiser(x, None, c))
    assert calls == [False]  # outside: the conditional pass alone
    assert torch.equal(cfg(x, torch.full((5,), 0.8), c), conditional_denoiser(x, None, c))  # one time per sample
    with pytest.raises(ValueError, match="straddle"):
        cfg(x, torch.tensor([0.1, 0.1, 0.5, 0.5, 0.5]), c)
    for bad in [(0.5, 0.5), (-0.1, 0.5), (0.2, 1.5)]:
        with pytest.raises(ValueError, match="0 <= t_low < t_high <= 1"):
            ClassifierFreeGuidance(counted, 2.0, interval=bad)


def test_gradient_guidance_pulls_samples_towards_the_target_property():
    gmm, sched, space = GaussianMixture.default_2d(), NoiseSchedule.from_name("cosine"), EuclideanSpace()
    # a noisy-data property regressor: the first coordinate of E[x0 | x_t], differentiable in x_t
    first_coordinate = lambda x, t, cond: gmm.posterior_mean(x, sched.alpha(t), sched.sigma(t))[:, 0]  # noqa: E731
    target = torch.tensor(1.5, dtype=torch.float64)
    x_T = space.noise(torch.zeros(4000, 2, dtype=torch.float64), torch.Generator().manual_seed(0))
    times = sampler_times("dpmpp2m", sched, 20)
    plain = dpmpp2m(gmm.exact_denoiser(sched), x_T, sched, times, space)
    guided_denoiser = PropertyGradientGuidance(gmm.exact_denoiser(sched), first_coordinate, target, 1.0, sched)
    guided = dpmpp2m(guided_denoiser, x_T, sched, times, space)
    assert (guided[:, 0] - 1.5).abs().mean() < 0.8 * (plain[:, 0] - 1.5).abs().mean()


def test_gradient_guidance_projects_its_gradient_onto_zero_com():
    batch = torch.tensor([0, 0, 0, 1, 1])
    space = ZeroCoMSpace(batch, 2)
    sched = NoiseSchedule.from_name("polynomial_2")
    x = space.noise(torch.zeros(5, 3, dtype=torch.float64), torch.Generator().manual_seed(0))
    # the property's gradient is a constant translation, which the projection must remove
    translation = lambda x, t, cond: x.sum(1)  # noqa: E731
    guided = PropertyGradientGuidance(lambda x, t, c: torch.zeros_like(x), translation, torch.tensor(10.0), 1.0, sched,
                                      project=space.project)
    out = guided(x, torch.tensor(0.5), None)
    assert space.centre_of_mass(out).abs().max() < 1e-12
