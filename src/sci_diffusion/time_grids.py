"""Time grids: the decreasing times ``1 = t_0 > t_1 > ... > t_N = 0`` a sampler steps through.

The builders are separate from the samplers, as k-diffusion's ``get_sigmas_*`` are: a sampler takes
a ``spacing`` name (or an explicit grid) and never builds a grid itself.

A grid of ``N`` steps is DPM-Solver's ``get_time_steps(skip_type, t_T=1, t_0=1/T, N - 1)`` (Lu et al.
2022) followed by 0: DPM-Solver's ``N - 1`` steps and its ``denoise_to_zero`` step, ``N`` network
evaluations in all. A model trained on ``t in {1..T}/T`` (:class:`~sci_diffusion.module.DiffusionModule`)
is therefore evaluated only where it was trained, ``t >= 1/T``. The samplers treat the final 0 as
clean data (``sigma = 0``, see :func:`~sci_diffusion.samplers.step_coefficients`), so the last step
returns the network's data estimate at ``1/T``, whatever noise the schedule keeps at t = 0.

Spacings (``SPACINGS``):

- ``"uniform"``: uniform in t (DPM-Solver's ``time_uniform``; DDPM/DDIM practice);
- ``"quadratic"``: uniform in sqrt(t), so the steps crowd near t = 0 (``time_quadratic``);
- ``"cubic"``: uniform in t^(1/3), crowding them more (not DPM-Solver's: ``time_quadratic`` with the third power);
  on the bundled bond-aware molecule model it lifts 8-step molecule stability over ``"quadratic"``
  (``benchmarks/molecules_time_grids.py``);
- ``"logsnr"``: uniform in ``lambda = log(alpha/sigma)`` (``logSNR``, DPM-Solver's advice for its
  solvers). A path that reaches pure noise at t = 1 (rectified flow, ``paths.py``) has ``lambda(1) = -inf``:
  its grid is uniform in ``lambda`` from ``lambda(1 - 1/T)``, the mirror of its end at ``1/T``, and starts at 1.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .names import SPACINGS
from .schedules import NoiseSchedule

__all__ = ["SPACINGS", "check_spacing", "logsnr_times", "power_times", "time_grid", "uniform_times"]

POWERS = {"quadratic": 2, "cubic": 3}  # the spacings uniform in t^(1/power)


def uniform_times(steps: int, t_min: float, start: float = 1.0) -> Tensor:
    """``steps + 1`` times uniform in t from ``start`` to ``t_min``; float64."""
    return torch.linspace(start, t_min, steps + 1, dtype=torch.float64)


def power_times(steps: int, t_min: float, start: float = 1.0, power: int = 2) -> Tensor:
    """``steps + 1`` times uniform in t^(1/power) from ``start`` to ``t_min`` (power 2: sqrt(t)); float64."""
    return torch.linspace(start ** (1 / power), t_min ** (1 / power), steps + 1, dtype=torch.float64) ** power


def logsnr_times(schedule: NoiseSchedule, steps: int, t_min: float, start: float = 1.0) -> Tensor:
    """``steps + 1`` times uniform in the schedule's ``lambda`` from ``lambda(start)`` (or ``lambda(1 - t_min)`` where
    ``lambda(1) = -inf``: a flow path) to ``lambda(t_min)``, the first time set to ``start``."""
    first = float(schedule.log_snr(start))
    first = first if math.isfinite(first) else float(schedule.log_snr(1.0 - t_min))
    lam = torch.linspace(first, float(schedule.log_snr(t_min)), steps + 1, dtype=torch.float64)
    times = schedule.t_from_log_snr(lam)
    times[0], times[-1] = start, t_min  # the inverse is exact only to rounding at the ends
    return times


def check_spacing(spacing: str) -> None:
    """Raise ``ValueError`` (one sentence) unless ``spacing`` is one of ``SPACINGS`` (:func:`time_grid` and
    ``samplers.resolve_spacing`` both check with it)."""
    if spacing not in SPACINGS:
        raise ValueError(f"Unknown time spacing {spacing!r}; choose one of {', '.join(SPACINGS)}.")


def time_grid(schedule: NoiseSchedule, steps: int, spacing: str = "uniform", start: float = 1.0) -> Tensor:
    """The ``(steps + 1,)`` float64 grid from ``start`` (1: pure noise) to 0 for a sampler taking ``steps`` steps.

    Points ``0 .. steps - 1`` (where the network is evaluated) are DPM-Solver's
    ``get_time_steps(spacing, start, 1/T, steps - 1)`` and lie in ``[1/T, start]``; the last point is 0. A
    ``start`` below 1 is the grid of a sampler that begins part-way, from a noised sample (``restart.py``).
    """
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"A sampler needs a whole number of steps, at least 1, not {steps!r}.")
    check_spacing(spacing)
    t_min, zero = 1.0 / schedule.T, torch.zeros(1, dtype=torch.float64)
    if not t_min < start <= 1.0:
        raise ValueError(f"A time grid starts in (1/T, 1] = ({t_min:g}, 1], not at {start!r}.")
    if steps == 1:
        return torch.tensor([start, 0.0], dtype=torch.float64)
    if spacing == "uniform":
        times = uniform_times(steps - 1, t_min, start)
    elif spacing in POWERS:
        times = power_times(steps - 1, t_min, start, POWERS[spacing])
    else:
        times = logsnr_times(schedule, steps - 1, t_min, start)
    return torch.cat([times, zero])
