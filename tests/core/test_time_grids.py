"""Time grids: DPM-Solver's ``get_time_steps`` (written out here from its released code) followed by
0, no network evaluation below t = 1/T in any sampler, and a last step that returns the data estimate."""
import numpy as np
import pytest
import torch

from sci_diffusion.samplers import DEFAULT_SPACING, SAMPLERS, resolve_spacing, sampler_times
from sci_diffusion.schedules import SCHEDULE_NAMES, NoiseSchedule
from sci_diffusion.state_spaces import EuclideanSpace
from sci_diffusion.time_grids import SPACINGS, time_grid

T = 1000


class DpmSolverDiscreteSchedule:
    """DPM-Solver's ``NoiseScheduleVP('discrete', alphas_cumprod=...)``: step k = 0..T-1 sits at
    t = (k + 1) / T, log(alpha) is piecewise linear in t between those points."""

    def __init__(self, alphas_cumprod: np.ndarray):
        self.t_array = np.linspace(0.0, 1.0, len(alphas_cumprod) + 1)[1:]
        self.log_alpha_array = 0.5 * np.log(alphas_cumprod)

    def marginal_lambda(self, t):
        log_alpha = np.interp(t, self.t_array, self.log_alpha_array)
        return log_alpha - 0.5 * np.log(1.0 - np.exp(2.0 * log_alpha))

    def inverse_lambda(self, lamb):
        log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * lamb)
        return np.interp(log_alpha, self.log_alpha_array[::-1], self.t_array[::-1])


def get_time_steps(ns: DpmSolverDiscreteSchedule, skip_type: str, t_T: float, t_0: float, N: int) -> np.ndarray:
    """DPM-Solver's ``DPM_Solver.get_time_steps``."""
    if skip_type == "logSNR":
        return ns.inverse_lambda(np.linspace(ns.marginal_lambda(t_T), ns.marginal_lambda(t_0), N + 1))
    if skip_type == "time_uniform":
        return np.linspace(t_T, t_0, N + 1)
    if skip_type == "time_quadratic":
        return np.linspace(t_T ** 0.5, t_0 ** 0.5, N + 1) ** 2
    if skip_type == "time_cubic":  # not DPM-Solver's: its time_quadratic with the third power (our "cubic")
        return np.linspace(t_T ** (1 / 3), t_0 ** (1 / 3), N + 1) ** 3
    raise ValueError(skip_type)


DPM_SOLVER_NAME = {"uniform": "time_uniform", "quadratic": "time_quadratic", "cubic": "time_cubic", "logsnr": "logSNR"}


@pytest.mark.parametrize("schedule_name", SCHEDULE_NAMES)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 7, 50, 999])
def test_grid_is_dpm_solvers_get_time_steps_then_zero(schedule_name, spacing, steps):
    """N steps: DPM-Solver's N - 1 steps from 1 to t_0 = 1/T, then its denoise-to-zero step."""
    schedule = NoiseSchedule.from_name(schedule_name, T)
    ours = time_grid(schedule, steps, spacing).numpy()
    assert ours.shape == (steps + 1,) and ours[0] == 1.0 and ours[-1] == 0.0
    assert np.all(np.diff(ours) < 0)
    if steps > 1:
        reference = get_time_steps(DpmSolverDiscreteSchedule(schedule.alpha_bar_table[1:]), DPM_SOLVER_NAME[spacing],
                                   1.0, 1.0 / T, steps - 1)
        np.testing.assert_allclose(ours[:-1], reference, rtol=1e-9, atol=1e-12)


class RecordingDenoiser:
    """Returns zeros and remembers every time it was asked about."""

    def __init__(self):
        self.times = []

    def __call__(self, x, t, cond=None):
        self.times.append(float(t))
        return torch.zeros_like(x)


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [3, 50, 200])
def test_no_sampler_evaluates_the_network_below_the_first_training_time(name, spacing, steps):
    """Training draws t from {1..T}/T: every sampler, on every spacing, stays at t >= 1/T and ends at 0."""
    schedule = NoiseSchedule.from_name("polynomial_2", T)
    denoiser, ends = RecordingDenoiser(), []
    SAMPLERS[name](denoiser, torch.randn(4, 2), schedule, time_grid(schedule, steps, spacing), EuclideanSpace(),
                   generator=torch.Generator().manual_seed(0), callback=lambda i, t, x, x0: ends.append(t))
    assert min(denoiser.times) >= np.float32(1.0 / T)  # the network is handed t in float32
    assert max(denoiser.times) == 1.0 and ends[-1] == 0.0


def test_each_samplers_grid_has_its_default_spacing():
    schedule = NoiseSchedule.from_name("polynomial_2", T)
    assert DEFAULT_SPACING == {"ddpm": "uniform", "ddim": "uniform", "dpmpp2m": "logsnr",
                               "dpmpp2m_sde": "quadratic", "heun": "logsnr", "pc": "uniform"}
    for name, spacing in DEFAULT_SPACING.items():
        first_steps = RecordingDenoiser()
        SAMPLERS[name](first_steps, torch.randn(4, 2), schedule, sampler_times(name, schedule, 10), EuclideanSpace(),
                       generator=torch.Generator())
        expected = time_grid(schedule, 10, spacing)[:2].float()
        assert first_steps.times[:2] == expected.tolist(), name
        assert resolve_spacing(name) == spacing and resolve_spacing(name, "uniform") == "uniform"
        assert torch.equal(sampler_times(name, schedule, 10, "uniform"), time_grid(schedule, 10, "uniform"))
    with pytest.raises(ValueError, match="Unknown sampler"):
        resolve_spacing("euler")
    with pytest.raises(ValueError, match="Unknown time spacing 'karras'"):
        resolve_spacing("ddim", "karras")  # a command's --spacing is refused before any model loads


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_the_last_step_returns_the_data_estimate_even_where_the_schedule_keeps_noise_at_zero(name):
    """``polynomial_2`` keeps sigma = 0.003 at t = 0 (lambda(0) - lambda(1/T) = 0.1): a last step to
    that noise level would keep 90 % of x and spend the network's last call on almost nothing.
    With a denoiser that always answers c, every sampler must return exactly c."""
    schedule = NoiseSchedule.from_name("polynomial_2", T)
    assert float(schedule.sigma(0.0)) > 1e-3
    c = torch.tensor([[0.25, -1.5]], dtype=torch.float64).expand(8, 2)
    out = SAMPLERS[name](lambda x, t, cond=None: c.clone(), torch.randn(8, 2, dtype=torch.float64), schedule,
                         sampler_times(name, schedule, 5),
                         EuclideanSpace(), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, c, rtol=0, atol=1e-12)


def test_bad_spacing_and_step_counts_are_one_sentence():
    schedule = NoiseSchedule.from_name("cosine", T)
    with pytest.raises(ValueError, match="uniform, quadratic, cubic, logsnr"):
        time_grid(schedule, 10, "karras")
    for steps in (0, -3, 2.5):
        with pytest.raises(ValueError, match="at least 1"):
            time_grid(schedule, steps)
