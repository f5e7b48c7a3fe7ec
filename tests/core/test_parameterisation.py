"""eps / x0 / v conversions and the weighted loss."""
import pytest
import torch

from sci_diffusion.parameterisation import PREDICTIONS, diffusion_loss, target_for, to_eps, to_x0
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


def test_min_snr_weight_caps_low_noise_steps_and_keeps_high_noise_ones():
    s = NoiseSchedule.from_name("cosine")
    w = s.loss_weight(torch.tensor([0.01, 0.99], dtype=torch.float64), "min_snr", gamma=5.0)
    assert w[0] < 0.1 and w[1] == pytest.approx(1.0)


def test_masked_loss_ignores_elements_outside_the_mask():
    pred, target = torch.zeros(2, 4), torch.ones(2, 4)
    target[:, 2:] = 100.0
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert float(diffusion_loss(pred, target, mask=mask)) == pytest.approx(1.0)
