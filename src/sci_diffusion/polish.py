"""Polishing a finished sample: iterate the denoiser at one small time, so that each sample climbs to a mode of the
smoothed data density.

By Tweedie's formula the denoiser of a Gaussian path is ``D(x_t, t) = (x_t + sigma^2 grad log p_t(x_t)) / alpha``,
so the iteration ``x <- D(alpha x, t)`` is gradient ascent on ``log p_t`` with the step ``sigma(t)^2 / alpha(t)`` (in
the data's units), and its fixed points are the modes of ``p_t``, the data density blurred by ``sigma(t)``. A small
``t`` blurs little; the iteration then trades a little of the sample's spread for samples nearer the density's peaks,
as lowering the temperature does (Ingraham et al. 2023, Chroma; the noise scale below 1 of RFdiffusion).

What it is for here: a molecule model's last steps leave bond lengths and angles slightly off, and the GFN2-xTB
relaxation energy of issue 28 measures exactly that; polishing the coordinates at t = 0.02 moves them towards the
geometry the network has learned to be most likely (``benchmarks/molecules_restarts.py --settings`` measures it).

Only the Gaussian entries move, and of those only the first ``columns`` columns when given (a molecule's coordinates,
not its element features): a categorical part (bond orders) and any padding keep the values the sampler gave them
(``StateSpace.categorical_mask``), and the result is projected onto the space (zero centre of mass). On one
Gaussian ``N(mu, s^2)`` the iteration contracts ``x - mu`` by ``alpha^2 s^2 / (alpha^2 s^2 + sigma^2)`` per step
(``tests/core/test_polish.py`` checks it).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .schedules import NoiseSchedule
from .state_spaces import StateSpace

Sampler = Callable[..., Tensor]


def polish(denoiser: Callable, x: Tensor, schedule: NoiseSchedule, t: float, iterations: int, space: StateSpace,
           cond: Any = None, columns: int | None = None) -> Tensor:
    """``iterations`` steps of ``x <- D(alpha(t) x, t)`` on the Gaussian entries of the finished sample ``x``
    (shaped like the sampler's state ``(rows, width)``), of its first ``columns`` columns only when given; the other
    entries, categorical ones and padding are kept. Costs ``iterations`` network passes."""
    tt = torch.tensor(t, dtype=torch.float64)
    alpha = float(schedule.alpha(tt))
    moving = space.categorical_mask(x) == 0
    if columns is not None:
        moving[..., columns:] = False
    t_net = tt.to(torch.float32)
    for _ in range(iterations):
        x = space.project(torch.where(moving, denoiser(alpha * x, t_net, cond).to(x.dtype), x))
    return x


@dataclass(frozen=True)
class Polish:
    """``iterations`` denoiser steps at the time ``t`` after a sampler has finished (module docstring).

    Args:
        iterations: how many times the denoiser is applied (0: none); each is one network pass.
        t: the diffusion time of the iteration, in ``(0, 1)``: its blur is ``sigma(t)``, its step ``sigma(t)^2``.
        columns: only the state's first ``columns`` columns move (molecules: 3, the coordinates); None: every
            Gaussian column.
    """
    iterations: int = 20
    t: float = 0.02
    columns: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.iterations, bool) or int(self.iterations) != self.iterations or self.iterations < 0:
            raise ValueError(f"The polishing iterations are a whole number >= 0, not {self.iterations!r}.")
        if not 0.0 < self.t < 1.0:
            raise ValueError(f"Polishing runs at a diffusion time in (0, 1), not {self.t!r}.")
        if self.columns is not None and self.columns < 1:
            raise ValueError(f"Polishing moves at least one column, not {self.columns!r}.")

    def function_evaluations(self) -> int:
        """The network passes polishing adds to a run (per molecule, image or sample)."""
        return self.iterations

    def wrap(self, sample: Sampler) -> Sampler:
        """``sample`` (a core sampler, or one wrapped by ``restart.Restarts``) followed by the polishing; the same
        signature as ``sample``."""

        def sample_then_polish(denoiser: Callable, x_T: Tensor, schedule: NoiseSchedule, times: Tensor,
                               space: StateSpace, *, cond: Any = None, generator: torch.Generator | None = None,
                               progress: bool = False, callback: Callable | None = None) -> Tensor:
            x = sample(denoiser, x_T, schedule, times, space, cond=cond, generator=generator, progress=progress,
                       callback=callback)
            return polish(denoiser, x, schedule, self.t, self.iterations, space, cond, self.columns)

        return sample_then_polish
