"""eps / x0 / v conversions and the weighted loss."""
import pytest
import torch

from sci_diffusion.parameterisation import PREDICTIONS, loss_weight, masked_mean_error, target_for, to_eps, to_x0
from sci_diffusion.schedules import NoiseSchedule


@pytest.mark.parametrize("kind", PREDICTIONS)
def test_each_parameterisation_recovers_x0_and_eps_from_its_own_target(kind):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g, dtype=torch.float64)
    s = NoiseSchedule.from_name("cosine")
    t = torch.rand(8, 1, generator=g, dtype=torch.float64) * 0.9 + 0.05
    a, sig = s.alpha(t), s.sigma(t)
    x_t = a * x0 + sig * eps
    target = target_for(kind, x0, eps, a, sig)
    assert torch.allclose(to_x0(target, x_t, a, sig, kind), x0)
    assert torch.allclose(to_eps(target, x_t, a, sig, kind), eps)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_min_snr_is_diffusers_formula_for_each_prediction_type(prediction):
    s = NoiseSchedule.from_name("cosine")
    t = torch.tensor([0.01, 0.3, 0.7, 0.99], dtype=torch.float64)
    snr = torch.exp(2 * s.log_snr(t))
    capped = torch.minimum(snr, torch.full_like(snr, 5.0))
    expected = {"x0": capped, "eps": capped / snr, "v": capped / (snr + 1)}[prediction]  # diffusers' train scripts
    torch.testing.assert_close(loss_weight(snr, prediction, "min_snr", gamma=5.0), expected.float())


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("kind, x0_weight", [("min_snr", lambda snr: snr.clamp(max=5.0)), ("snr", lambda snr: snr),
                                             ("clipped_snr", lambda snr: snr.clamp(min=0.05, max=1.5))])
def test_every_weighting_is_one_weight_on_the_x0_error_whatever_the_prediction(prediction, kind, x0_weight):
    """The weighted error of a wrong prediction equals ``w(SNR)`` times the x0 error it implies."""
    g = torch.Generator().manual_seed(0)
    s = NoiseSchedule.from_name("cosine")
    t = torch.rand(16, 1, generator=g, dtype=torch.float64) * 0.9 + 0.05
    a, sig = s.alpha(t), s.sigma(t)
    x0, eps = torch.randn(16, 3, generator=g, dtype=torch.float64), torch.randn(16, 3, generator=g, dtype=torch.float64)
    x_t = a * x0 + sig * eps
    target = target_for(prediction, x0, eps, a, sig)
    pred = target + 0.1 * torch.randn(16, 3, generator=g, dtype=torch.float64)
    snr = (a / sig) ** 2
    weighted = loss_weight(snr, prediction, kind).double() * (pred - target).pow(2).sum(1, keepdim=True)
    x0_error = (to_x0(pred, x_t, a, sig, prediction) - x0).pow(2).sum(1, keepdim=True)
    torch.testing.assert_close(weighted, x0_weight(snr) * x0_error, rtol=1e-5, atol=1e-9)


def test_the_clipped_snr_ceiling_is_gamma_and_reaches_the_loss_from_the_module():
    """``loss_weight_gamma`` moves the clipped SNR's ceiling (EQGAT-diff's 1.5 when None), keeps its 0.05 floor, and
    a module built with it hands it to its loss."""
    from sci_diffusion.toy import MixtureDiffusion

    snr = torch.tensor([0.01, 1.0, 3.0, 50.0, 500.0])
    torch.testing.assert_close(loss_weight(snr, "x0", "clipped_snr"), torch.tensor([0.05, 1.0, 1.5, 1.5, 1.5]))
    torch.testing.assert_close(loss_weight(snr, "x0", "clipped_snr", 100.0), torch.tensor([0.05, 1.0, 3.0, 50.0, 100.0]))
    module = MixtureDiffusion(hidden=8, prediction="x0", loss_weighting="clipped_snr", loss_weight_gamma=100.0)
    assert module.loss_fn.weighting_gamma == 100.0


def test_unknown_weightings_and_predictions_are_refused():
    with pytest.raises(ValueError, match="loss weighting"):
        loss_weight(torch.ones(2), "eps", "snr2")
    with pytest.raises(ValueError, match="prediction"):
        loss_weight(torch.ones(2), "score", "min_snr")


def test_masked_loss_ignores_elements_outside_the_mask():
    pred, target = torch.zeros(2, 4), torch.ones(2, 4)
    target[:, 2:] = 100.0
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert float(masked_mean_error(pred, target, mask=mask)) == pytest.approx(1.0)


@pytest.mark.parametrize("prediction, diffusers_name", [("eps", "epsilon"), ("x0", "sample"), ("v", "v_prediction")])
def test_x0_from_each_prediction_matches_diffusers(prediction, diffusers_name):
    """Our x0 from an eps, x0 or v network output against diffusers' DDIM ``pred_original_sample``
    (and, for v, the training target against ``get_velocity``), at the same step of the same schedule."""
    from diffusers import DDIMScheduler

    k = 700  # diffusers' step k is our t = (k + 1) / T
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type=diffusers_name,
                        clip_sample=False, set_alpha_to_one=True)
    ref.set_timesteps(50)
    g = torch.Generator().manual_seed(0)
    x_t, output = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    expected = ref.step(output, k, x_t).pred_original_sample
    s = NoiseSchedule.from_alphas_cumprod(ref.alphas_cumprod)
    t = torch.tensor((k + 1) / 1000, dtype=torch.float64)
    torch.testing.assert_close(to_x0(output, x_t, s.alpha(t), s.sigma(t), prediction), expected, rtol=1e-6, atol=1e-6)
    if prediction == "v":
        x0, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
        velocity = ref.get_velocity(x0, eps, torch.tensor([k]))
        torch.testing.assert_close(target_for("v", x0, eps, s.alpha(t), s.sigma(t)), velocity, rtol=1e-6, atol=1e-6)
