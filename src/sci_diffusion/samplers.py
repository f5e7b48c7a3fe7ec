"""Samplers: pure functions with one signature.

``sampler(denoiser, x_T, schedule, steps, space, *, cond=None, generator=None, progress=False,
callback=None, **options) -> x_0``

- ``denoiser(x_t, t, cond) -> x0_hat``: ``t`` is a 0-d float32 tensor in [0, 1]; the result has
  ``x_t``'s shape. Wrap an eps/x0/v network with :class:`sci_diffusion.denoiser.PredictionDenoiser`;
  guidance wrappers (``sci_diffusion.guidance``) return denoisers too, so no sampler knows
  whether it is guided.
- ``steps``: the number of steps (independent of the training T), or an explicit decreasing
  time grid (1-D tensor from ~1 to 0).
- ``spacing``: how ``steps`` are laid out in time, one of :data:`~sci_diffusion.time_grids.SPACINGS`
  (``uniform``, ``quadratic``, ``logsnr``; built by :func:`~sci_diffusion.time_grids.time_grid`,
  which keeps every network evaluation at ``t >= 1/T``); each sampler has its own default,
  ``DEFAULT_SPACING``. Ignored when ``steps`` is a grid.
- ``space``: the :class:`~sci_diffusion.state_spaces.StateSpace`; all noise comes from it.
- ``generator``: a ``torch.Generator``; with it, sampling is deterministic.
- ``callback(i, t, x_t, x0_hat)``: called after each step with the intermediate state.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .denoiser import Denoiser
from .names import SAMPLER_NAMES
from .schedules import NoiseSchedule
from .state_spaces import StateSpace
from .time_grids import time_grid

Callback = Callable[[int, float, Tensor, Tensor], None]


def _grid(schedule: NoiseSchedule, steps: int | Tensor, spacing: str) -> Tensor:
    if isinstance(steps, Tensor):
        return steps.to(torch.float64)
    return time_grid(schedule, steps, spacing)


def step_coefficients(schedule: NoiseSchedule, t: Tensor) -> tuple[float, float, float]:
    """``(alpha, sigma, lambda)`` at a scalar grid time, as Python floats (float64 math).

    A grid's last time, 0, is the data itself: ``(1, 0, inf)``, so every sampler's last step returns
    its data estimate. (``polynomial_2`` keeps ``sigma = 0.003`` at t = 0; stepping there would keep
    90 % of the noise left at t = 1/T, a network evaluation spent on almost nothing.)"""
    if float(t) == 0.0:
        return 1.0, 0.0, float("inf")
    return float(schedule.alpha(t)), float(schedule.sigma(t)), float(schedule.log_snr(t))


def _steps(times: Tensor, progress: bool, name: str):
    pairs = list(zip(times[:-1], times[1:]))
    return tqdm(list(enumerate(pairs)), desc=name, disable=not progress, leave=False)


def _denoise(denoiser: Denoiser, x: Tensor, t: Tensor, cond: Any) -> Tensor:
    return denoiser(x, t.to(torch.float32), cond)


def ddpm_step(x: Tensor, x0: Tensor, a_t: float, s_t: float, a_s: float, s_s: float, noise: Tensor | None) -> Tensor:
    """One ancestral step from ``t`` to ``s < t``: a draw from ``q(x_s | x_t, x_0 = x0)``."""
    a_ts = a_t / a_s
    var_ts = s_t**2 - a_ts**2 * s_s**2
    mean = (a_ts * s_s**2 / s_t**2) * x + (a_s * var_ts / s_t**2) * x0
    if noise is None:
        return mean
    return mean + (var_ts * s_s**2 / s_t**2) ** 0.5 * noise


def ddim_step(x: Tensor, x0: Tensor, a_t: float, s_t: float, a_s: float, s_s: float, eta: float, noise: Tensor | None) -> Tensor:
    """One DDIM step (Song et al. 2021, Eq. 12) from ``t`` to ``s < t``."""
    eps = (x - a_t * x0) / s_t
    std = eta * ((s_s**2 / s_t**2) * (1 - (a_t**2) / (a_s**2))) ** 0.5 if s_t > 0 else 0.0
    out = a_s * x0 + max(s_s**2 - std**2, 0.0) ** 0.5 * eps
    return out if (noise is None or std == 0) else out + std * noise


def ddpm(denoiser: Denoiser, x_T: Tensor, schedule: NoiseSchedule, steps: int | Tensor, space: StateSpace, *,
         cond: Any = None, generator: torch.Generator | None = None, progress: bool = False,
         callback: Callback | None = None, spacing: str = "uniform") -> Tensor:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) on any time grid; no noise on the last step."""
    x = x_T
    times = _grid(schedule, steps, spacing)
    for i, (t, s) in _steps(times, progress, "ddpm"):
        a_t, s_t, _ = step_coefficients(schedule, t)
        a_s, s_s, _ = step_coefficients(schedule, s)
        x0 = _denoise(denoiser, x, t, cond)
        last = i == len(times) - 2
        noise = None if last else space.noise(x, generator)
        x = space.project(ddpm_step(x, x0, a_t, s_t, a_s, s_s, noise))
        if callback:
            callback(i, float(s), x, x0)
    return x


def ddim(denoiser: Denoiser, x_T: Tensor, schedule: NoiseSchedule, steps: int | Tensor, space: StateSpace, *,
         cond: Any = None, generator: torch.Generator | None = None, progress: bool = False,
         callback: Callback | None = None, spacing: str = "uniform", eta: float = 0.0) -> Tensor:
    """DDIM (Song, Meng & Ermon 2021); ``eta = 0`` is deterministic, ``eta = 1`` is DDPM-like."""
    x = x_T
    for i, (t, s) in _steps(_grid(schedule, steps, spacing), progress, "ddim"):
        a_t, s_t, _ = step_coefficients(schedule, t)
        a_s, s_s, _ = step_coefficients(schedule, s)
        x0 = _denoise(denoiser, x, t, cond)
        noise = space.noise(x, generator) if eta > 0 else None
        x = space.project(ddim_step(x, x0, a_t, s_t, a_s, s_s, eta, noise))
        if callback:
            callback(i, float(s), x, x0)
    return x


def dpmpp_2m_step(x: Tensor, d0: Tensor, d_prev: Tensor | None, s_t: float, a_s: float, s_s: float,
                  h: float, h_prev: float | None) -> Tensor:
    """One DPM-Solver++(2M) update (Lu et al. 2022, Algorithm 2), first order if ``d_prev`` is None.

    ``h = lambda_s - lambda_t``; ``d0``/``d_prev`` are x0 estimates at this and the previous time.
    """
    coef = -a_s * torch.expm1(torch.tensor(-h, dtype=torch.float64)).item()
    if d_prev is None:
        d = d0
    else:
        r = h_prev / h
        d = (1 + 1 / (2 * r)) * d0 - (1 / (2 * r)) * d_prev
    return (s_s / s_t) * x + coef * d


def dpmpp2m(denoiser: Denoiser, x_T: Tensor, schedule: NoiseSchedule, steps: int | Tensor, space: StateSpace, *,
            cond: Any = None, generator: torch.Generator | None = None, progress: bool = False,
            callback: Callback | None = None, spacing: str = "logsnr") -> Tensor:
    """DPM-Solver++(2M), multistep in x0-prediction; first order on the first and last step."""
    return _dpmpp2m_loop(denoiser, x_T, schedule, steps, space, cond, generator, progress, callback, spacing, False)


def dpmpp_2m_sde_step(x: Tensor, d0: Tensor, d_prev: Tensor | None, s_t: float, a_s: float, s_s: float,
                      h: float, h_prev: float | None, noise: Tensor | None) -> Tensor:
    """One SDE-DPM-Solver++(2M) update (Lu et al. 2022, the SDE variant; diffusers'
    ``sde-dpmsolver++`` with the midpoint rule), first order if ``d_prev`` is None.

    ``x_s = (sigma_s/sigma_t) e^-h x + alpha_s (1 - e^-2h)(d0 + D1/2) + sigma_s sqrt(1 - e^-2h) z``
    with ``D1 = (d0 - d_prev) / r``, ``r = h_prev / h`` and ``h = lambda_s - lambda_t``.
    """
    decay = torch.exp(torch.tensor(-h, dtype=torch.float64)).item()
    one_minus_decay2 = -torch.expm1(torch.tensor(-2 * h, dtype=torch.float64)).item()  # 1 - e^-2h
    d = d0 if d_prev is None else d0 + 0.5 * (d0 - d_prev) * (h / h_prev)
    out = (s_s / s_t) * decay * x + a_s * one_minus_decay2 * d
    if noise is None:
        return out
    return out + s_s * one_minus_decay2 ** 0.5 * noise


def dpmpp2m_sde(denoiser: Denoiser, x_T: Tensor, schedule: NoiseSchedule, steps: int | Tensor, space: StateSpace, *,
                cond: Any = None, generator: torch.Generator | None = None, progress: bool = False,
                callback: Callback | None = None, spacing: str = "quadratic") -> Tensor:
    """SDE-DPM-Solver++(2M): the stochastic DPM-Solver++, one evaluation per step. Fresh noise at
    every step corrects the errors of an imperfect denoiser as ancestral sampling does, which the
    ODE solver (:func:`dpmpp2m`) cannot; first order and noise-free on the last step.

    The default ``"quadratic"`` time grid crowds the steps near t = 0, where a molecule's bond
    lengths are settled: on the bundled QM9 model it keeps more molecules stable than the
    ``"logsnr"`` grid (``benchmarks/molecules_qm9.py`` measures it)."""
    return _dpmpp2m_loop(denoiser, x_T, schedule, steps, space, cond, generator, progress, callback, spacing, True)


def _dpmpp2m_loop(denoiser: Denoiser, x_T: Tensor, schedule: NoiseSchedule, steps: int | Tensor, space: StateSpace,
                  cond: Any, generator: torch.Generator | None, progress: bool, callback: Callback | None,
                  spacing: str, stochastic: bool) -> Tensor:
    """The multistep loop shared by the ODE and SDE forms of DPM-Solver++(2M)."""
    x = x_T
    times = _grid(schedule, steps, spacing)
    d_prev, h_prev = None, None
    for i, (t, s) in _steps(times, progress, "dpmpp2m_sde" if stochastic else "dpmpp2m"):
        _, s_t, lam_t = step_coefficients(schedule, t)
        a_s, s_s, lam_s = step_coefficients(schedule, s)
        h = lam_s - lam_t
        d0 = _denoise(denoiser, x, t, cond)
        last = i == len(times) - 2
        d_used = None if last else d_prev
        if stochastic:
            noise = None if last else space.noise(x, generator)
            x = space.project(dpmpp_2m_sde_step(x, d0, d_used, s_t, a_s, s_s, h, h_prev, noise))
        else:
            x = space.project(dpmpp_2m_step(x, d0, d_used, s_t, a_s, s_s, h, h_prev))
        d_prev, h_prev = d0, h
        if callback:
            callback(i, float(s), x, d0)
    return x


def heun(denoiser: Denoiser, x_T: Tensor, schedule: NoiseSchedule, steps: int | Tensor, space: StateSpace, *,
         cond: Any = None, generator: torch.Generator | None = None, progress: bool = False,
         callback: Callback | None = None, spacing: str = "logsnr") -> Tensor:
    """Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1).

    Integrates ``dy/dsigma = (y - D(y; sigma)) / sigma`` in the variance-exploding variables
    ``y = x / alpha``, ``sigma = sigma_t / alpha_t``; Euler on the last step. NFE = 2 steps - 1.
    """
    times = _grid(schedule, steps, spacing)
    y = x_T / step_coefficients(schedule, times[0])[0]
    for i, (t, s) in _steps(times, progress, "heun"):
        a_t, s_t, _ = step_coefficients(schedule, t)
        a_s, s_s, _ = step_coefficients(schedule, s)
        sig_t, sig_s = s_t / a_t, s_s / a_s
        x0 = _denoise(denoiser, y * a_t, t, cond)
        d = (y - x0) / sig_t
        y_next = y + (sig_s - sig_t) * d
        if i < len(times) - 2 and sig_s > 0:
            x0_next = _denoise(denoiser, y_next * a_s, s, cond)
            d_next = (y_next - x0_next) / sig_s
            y_next = y + (sig_s - sig_t) * 0.5 * (d + d_next)
        y = space.project(y_next)
        if callback:
            callback(i, float(s), y * a_s, x0)
    return y * step_coefficients(schedule, times[-1])[0]


def pc(denoiser: Denoiser, x_T: Tensor, schedule: NoiseSchedule, steps: int | Tensor, space: StateSpace, *,
       cond: Any = None, generator: torch.Generator | None = None, progress: bool = False,
       callback: Callback | None = None, spacing: str = "uniform", corrector_steps: int = 1,
       snr: float = 0.16) -> Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Algorithm 5 for VP SDEs).

    Predictor: an ancestral step. Corrector: ``corrector_steps`` Langevin steps at the new time
    with step size ``2 a (snr sigma_s)^2``: Song et al.'s ``2 a (snr ||z|| / ||score||)^2`` with the
    score at its noise-level norm ``||z|| / sigma_s``, so that no sample's step depends on the others
    in its batch (their code averages measured norms over the batch); ``a = alpha_bar_t / alpha_bar_s``
    is the coarse-step analogue of their ``1 - beta_i``.
    """
    x = x_T
    times = _grid(schedule, steps, spacing)
    for i, (t, s) in _steps(times, progress, "pc"):
        a_t, s_t, _ = step_coefficients(schedule, t)
        a_s, s_s, _ = step_coefficients(schedule, s)
        x0 = _denoise(denoiser, x, t, cond)
        last = i == len(times) - 2
        x = space.project(ddpm_step(x, x0, a_t, s_t, a_s, s_s, None if last else space.noise(x, generator)))
        if not last and s_s > 1e-3:
            # Song et al.'s step 2 a (snr ||z|| / ||score||)^2 with the score at its noise-level norm,
            # ||score|| = ||z|| / sigma_s: one step size for every sample. Their code measures both norms
            # and averages them over the batch, which makes a sample depend on the batch it is in.
            step = 2 * (a_t**2 / a_s**2) * (snr * s_s) ** 2
            for _ in range(corrector_steps):
                x0_s = _denoise(denoiser, x, s, cond)
                score = -(x - a_s * x0_s) / s_s**2
                z = space.noise(x, generator)
                x = space.project(x + step * score + (2 * step) ** 0.5 * z)
        if callback:
            callback(i, float(s), x, x0)
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {"ddpm": ddpm, "ddim": ddim, "dpmpp2m": dpmpp2m,
                                               "dpmpp2m_sde": dpmpp2m_sde, "heun": heun, "pc": pc}


assert tuple(SAMPLERS) == SAMPLER_NAMES  # the CLI offers the names before it imports torch

# Each sampler's default time grid, read from its signature.
DEFAULT_SPACING: dict[str, str] = {name: inspect.signature(f).parameters["spacing"].default
                                   for name, f in SAMPLERS.items()}


def get_sampler(name: str) -> Callable[..., Tensor]:
    """Look a sampler up by its CLI name (``ddpm``, ``ddim``, ``dpmpp2m``, ``dpmpp2m_sde``, ``heun``, ``pc``)."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"Unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}.") from None


def resolve_spacing(sampler: str, spacing: str | None = None) -> str:
    """The time grid a run of ``sampler`` uses: ``spacing``, or the sampler's default when None
    (the one place the default is filled in, so that what a run records is what it used)."""
    get_sampler(sampler)
    return spacing or DEFAULT_SPACING[sampler]


def function_evaluations(name: str, steps: int, corrector_steps: int = 1) -> int:
    """Network evaluations a sampler spends for ``steps`` steps."""
    return {"heun": 2 * steps - 1, "pc": steps + corrector_steps * max(steps - 1, 0)}.get(name, steps)
