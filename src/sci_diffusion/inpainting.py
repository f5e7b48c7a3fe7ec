"""Inpainting: sample the unknown entries of ``x`` given the known ones (RePaint, Lugmayr et al. 2022).

At every step the known entries are replaced by a draw of their forward-noised values
``alpha_s known + sigma_s eps``, and the unknown ones take an ancestral step (``samplers.ddpm_step``).
Replacing alone leaves the two parts only loosely in harmony; RePaint's *resampling* goes back from
``s`` to ``t`` with the forward kernel ``q(x_t | x_s)`` and steps again, ``resample`` times per step,
so the unknown part keeps adjusting to the known part. With the exact denoiser and enough steps and
resampling, the unknown part follows the exact conditional distribution (tested on the analytic
mixture, ``GaussianMixture.conditional``).

State spaces: in a zero-centre-of-mass space (molecules) the known fragment fixes the frame only up
to a translation. The known rows are placed at their noised values and then translated, all by one
vector, so that the whole graph's centre of mass is zero (``StateSpace.project_moving``); the
generated rows never move for the sake of the frame. The result's known rows are therefore the given
ones up to one translation per graph, which the caller may undo. Images and other Euclidean states
keep the known values exactly.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .denoiser import Denoiser
from .samplers import Callback, _denoise, ddpm_step, grid_steps, refuse_categorical
from .schedules import NoiseSchedule
from .state_spaces import StateSpace


def inpaint(denoiser: Denoiser, x_T: Tensor, schedule: NoiseSchedule, times: Tensor, space: StateSpace,
            known: Tensor, mask: Tensor, *, resample: int = 1, cond: Any = None,
            generator: torch.Generator | None = None, progress: bool = False, callback: Callback | None = None) -> Tensor:
    """Ancestral sampling of ``x`` with the entries where ``mask`` is 1 held to ``known``.

    Args:
        denoiser, x_T, schedule, times, space, cond, generator, progress, callback: as for every sampler
            (``sci_diffusion.samplers``); ``x_T`` is the starting noise. RePaint steps on a uniform grid
            (``time_grid(schedule, steps, "uniform")``).
        known: x-shaped tensor holding the known values (ignored where ``mask`` is 0).
        mask: 0/1, broadcastable to ``x``: 1 where the value is known.
        resample: passes per step (RePaint's r; 1: plain replacement). Each extra pass costs one
            more network call.

    Returns:
        The sample, x-shaped: ``known`` where ``mask`` is 1 (up to one translation per graph in a
        zero-centre-of-mass space), generated elsewhere.
    """
    if resample < 1:
        raise ValueError(f"resample must be at least 1, got {resample}.")
    refuse_categorical(space, "inpainting")  # RePaint's re-noising of the known entries is Gaussian only
    mask = mask.to(x_T.dtype).expand_as(x_T)
    known = known.to(x_T.dtype)

    def with_known(x: Tensor, a: float, s: float) -> Tensor:
        noised = a * known + (s * space.noise(x, generator) if s > 0 else 0.0)
        return space.project_moving(mask * noised + (1 - mask) * x, mask)

    x = None
    for step in grid_steps(schedule, times, progress, "inpaint"):
        a_t, s_t, a_s, s_s, last = step.alpha_t, step.sigma_t, step.alpha_s, step.sigma_s, step.last
        x = with_known(x_T, a_t, s_t) if x is None else x  # the known part noised to the grid's first time
        for r in range(1 if last else resample):
            x0 = _denoise(denoiser, x, step.t, cond)
            noise = None if last else space.noise(x, generator)
            x_s = with_known(space.project(ddpm_step(x, x0, a_t, s_t, a_s, s_s, noise)), a_s, s_s)
            if r < resample - 1 and not last:  # back to t with q(x_t | x_s), and step again
                a_ts = a_t / a_s
                x = space.project(a_ts * x_s + max(s_t**2 - a_ts**2 * s_s**2, 0.0) ** 0.5 * space.noise(x, generator))
            else:
                x = x_s
        if callback:
            callback(step.index, float(step.s), x, x0)
    return x
