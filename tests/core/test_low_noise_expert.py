"""``denoiser.LowNoiseExpert``: the expert answers every call at ``t <= below`` and the base model the others, through
a whole run with restarts and polishing; bad settings are refused in one sentence."""
import pytest
import torch

from sci_diffusion.denoiser import LowNoiseExpert
from sci_diffusion.polish import Polish
from sci_diffusion.restart import Restarts
from sci_diffusion.samplers import get_sampler
from sci_diffusion.schedules import NoiseSchedule
from sci_diffusion.state_spaces import EuclideanSpace
from sci_diffusion.time_grids import time_grid

SCHEDULE = NoiseSchedule.from_name("polynomial_2", 1000)


def test_the_expert_answers_exactly_the_late_calls_of_a_run():
    calls = {"base": [], "expert": []}

    def recorder(name):
        def denoise(x, t, cond=None):
            calls[name].append(float(t))
            return 0.5 * x
        return denoise

    denoiser = LowNoiseExpert(recorder("base"), recorder("expert"), below=0.15)
    sample = Polish(2, 0.02).wrap(Restarts(1, 0.15, 4).wrap(get_sampler("dpmpp2m_sde"), SCHEDULE, "quadratic"))
    grid = time_grid(SCHEDULE, 10, "quadratic")
    sample(denoiser, torch.zeros(3, 2), SCHEDULE, grid, EuclideanSpace(), generator=torch.Generator().manual_seed(0))
    late = [t for t in grid[:-1].tolist() if t <= 0.15 + 1e-9]
    assert calls["base"] == pytest.approx([t for t in grid[:-1].tolist() if t > 0.15 + 1e-9])
    assert len(calls["expert"]) == len(late) + 4 + 2 and max(calls["expert"]) <= 0.15 + 1e-6
    assert calls["expert"][-2:] == pytest.approx([0.02, 0.02])  # the polishing is the expert's


def test_bad_expert_settings_are_refused_in_one_sentence():
    with pytest.raises(ValueError, match=r"below a time in \(0, 1\)"):
        LowNoiseExpert(lambda x, t, c=None: x, lambda x, t, c=None: x, below=1.0)
    expert = LowNoiseExpert(lambda x, t, c=None: x, lambda x, t, c=None: x, below=0.1)
    with pytest.raises(ValueError, match="one time per call"):
        expert(torch.zeros(2, 1), torch.tensor([0.1, 0.2]))
