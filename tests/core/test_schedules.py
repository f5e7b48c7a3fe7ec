"""Noise schedules: monotone, right endpoints, EDM's polynomial_2 value, exact inverses."""
import numpy as np
import pytest
import torch

from sci_diffusion.schedules import SCHEDULE_NAMES, NoiseSchedule


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_schedule_is_monotone_with_clean_and_noisy_endpoints(name):
    s = NoiseSchedule.from_name(name, 1000)
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    ab = s.alpha_bar(t)
    assert torch.all(ab[1:] < ab[:-1])
    assert ab[0] > 0.999 and ab[-1] < 0.01
    lam = s.log_snr(t[1:])
    assert torch.all(lam[1:] < lam[:-1])


def test_polynomial_2_matches_edm_at_t_500():
    s = NoiseSchedule.from_name("polynomial_2", 1000)
    assert float(s.discrete_alpha_bar(500)) == pytest.approx(0.5625, abs=1e-4)
    # the precision step keeps the ends away from 0 and 1 by s = 1e-5
    assert float(s.discrete_alpha_bar(0)) == pytest.approx(1 - 1e-5, abs=1e-9)
    assert float(s.discrete_alpha_bar(1000)) >= 1e-5


def test_cosine_schedule_matches_diffusers_squaredcos_cap_v2():
    """An independent reference (diffusers' Nichol & Dhariwal betas), read through our continuous
    time at the grid points (diffusers' step k is our t = (k + 1) / T)."""
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod.double()
    ours = NoiseSchedule.from_name("cosine", 1000)
    k = torch.arange(0, 1000, 37)
    torch.testing.assert_close(ours.alpha_bar((k.double() + 1) / 1000), ref[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_t_of_lambda_inverts_lambda_of_t(name):
    s = NoiseSchedule.from_name(name, 1000)
    t = torch.rand(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.998 + 0.001
    assert torch.allclose(s.t_from_log_snr(s.log_snr(t)), t, atol=1e-7)


def test_linear_schedule_matches_diffusers_alphas_cumprod():
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod.double().numpy()
    ours = NoiseSchedule.from_name("linear", 1000).alpha_bar_table[1:]
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


def test_bad_schedule_name_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown noise schedule"):
        NoiseSchedule.from_name("quadratic")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")
def test_schedule_answers_on_the_device_of_its_argument():
    s = NoiseSchedule.from_name("polynomial_2", 1000)
    t = torch.rand(7, dtype=torch.float64, device="cuda")
    for f in (s.alpha, s.sigma, s.log_snr):
        assert f(t).device == t.device
        torch.testing.assert_close(f(t).cpu(), f(t.cpu()))
    assert s.t_from_log_snr(s.log_snr(t)).device == t.device
    assert s.discrete_alpha_bar(torch.arange(3, device="cuda")).device == t.device


def test_schedules_compare_by_identity_and_hash_without_raising():
    a, b = NoiseSchedule.from_name("cosine"), NoiseSchedule.from_name("cosine")
    assert a == a and a != b  # a NumPy table has no truth value: eq=False compares identity
    assert len({a, b}) == 2
