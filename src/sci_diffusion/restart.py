"""Restart sampling from the end of a run (Xu et al. 2023, "Restart Sampling for Improving Generative Processes",
with the restart interval's lower end at t = 0).

After a sampler has run its grid down to t = 0, the sample is carried forward to ``t_max`` by the forward process
(``x_t = alpha x + sigma eps`` on the Gaussian entries, a draw of ``q(x_t | x_0)`` on categorical ones) and sampled
back to 0 by the same sampler on a short grid from ``t_max`` (``time_grids.time_grid(..., start=t_max)``), ``count``
times. Xu et al.'s argument: the forward noise contracts the error the backward pass has accumulated (the network's
and the discretisation's), and each short backward pass adds little of its own. With the exact denoiser a restart
changes nothing in distribution: the forward jump followed by the exact reverse process is a Markov kernel that
leaves the data distribution where it is (``tests/core/test_restart.py`` checks it on the analytic mixture).

What it is for here: a trained network's last steps leave its molecules slightly off their energy minimum;
restarting from ``t_max`` of 0.15 re-settles the bond lengths and angles (``benchmarks/molecules_qm9.py --restarts``
measures the GFN2-xTB relaxation energy with and without). A restart costs ``steps`` network passes more.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .schedules import NoiseSchedule
from .state_spaces import StateSpace
from .time_grids import time_grid

Sampler = Callable[..., Tensor]


def forward_jump(x0: Tensor, schedule: NoiseSchedule, t: float, space: StateSpace,
                 generator: torch.Generator | None = None) -> Tensor:
    """A draw of ``x_t ~ q(x_t | x_0 = x0)`` at one time ``t``: ``alpha(t) x0 + sigma(t) eps`` projected onto
    ``space`` (zero centre of mass for coordinates), categorical rows drawn from their own forward process.
    ``x0`` and the result are shaped like the sampler's state."""
    tt = torch.tensor(t, dtype=torch.float64)
    alpha, sigma = float(schedule.alpha(tt)), float(schedule.sigma(tt))
    x_t = space.project(alpha * x0 + sigma * space.noise(x0, generator))
    return space.categorical_forward(x_t, x0, tt, generator)


@dataclass(frozen=True)
class Restarts:
    """``count`` restarts from ``t_max``, each sampled back to 0 in ``steps`` steps.

    Args:
        count: how many times the finished sample is carried forward and sampled back (0: none).
        t_max: the diffusion time it is carried forward to, in ``(1/T, 1]``.
        steps: the sampler steps of each way back.
    """
    count: int = 2
    t_max: float = 0.15
    steps: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or int(self.count) != self.count or self.count < 0:
            raise ValueError(f"The number of restarts is a whole number >= 0, not {self.count!r}.")
        if not 0.0 < self.t_max <= 1.0:
            raise ValueError(f"A restart carries a sample forward to a time in (0, 1], not {self.t_max!r}.")

    def function_evaluations(self) -> int:
        """The network passes the restarts add to a run (per molecule, image or sample)."""
        return self.count * self.steps

    def wrap(self, sample: Sampler, schedule: NoiseSchedule, spacing: str) -> Sampler:
        """``sample`` (a core sampler) followed by the restarts, each on ``time_grid(schedule, steps, spacing,
        start=t_max)``; the same signature as ``sample``. The callback watches the first pass only."""
        back = time_grid(schedule, self.steps, spacing, start=self.t_max)  # checks t_max > 1/T and the steps

        def sample_with_restarts(denoiser: Callable, x_T: Tensor, schedule: NoiseSchedule, times: Tensor,
                                 space: StateSpace, *, cond: Any = None, generator: torch.Generator | None = None,
                                 progress: bool = False, callback: Callable | None = None) -> Tensor:
            x = sample(denoiser, x_T, schedule, times, space, cond=cond, generator=generator, progress=progress,
                       callback=callback)
            for _ in range(self.count):
                x = sample(denoiser, forward_jump(x, schedule, self.t_max, space, generator), schedule, back, space,
                           cond=cond, generator=generator, progress=progress)
            return x

        return sample_with_restarts
