"""Samplers: pure functions with one signature.

``sampler(denoiser, x_T, schedule, times, space, *, cond=None, generator=None, progress=False,
callback=None, **options) -> x_0``

- ``denoiser(x_t, t, cond) -> x0_hat``: ``t`` is a 0-d float32 tensor in [0, 1]; the result has
  ``x_t``'s shape. Wrap an eps/x0/v network with :class:`sci_diffusion.denoiser.PredictionDenoiser`;
  guidance wrappers (``sci_diffusion.guidance``) return denoisers too, so no sampler knows
  whether it is guided.
- ``times``: the decreasing time grid ``(N + 1,)`` float64 from 1 to 0 that the sampler steps through,
  built outside it, as k-diffusion passes ``sigmas`` and NVlabs/edm ``t_steps``: by
  :func:`~sci_diffusion.time_grids.time_grid` (``N`` steps, independent of the training T, laid out by a
  ``spacing`` of :data:`~sci_diffusion.time_grids.SPACINGS`), or for a named sampler with its own default
  spacing (``DEFAULT_SPACING``) by :func:`sampler_times`. A sampler is only its update rule.
- ``space``: the :class:`~sci_diffusion.state_spaces.StateSpace`; all noise comes from it. A space with
  categorical parts (``categorical.py``: bond orders) is stepped by ``ddpm`` and ``dpmpp2m_sde``, whose
  categorical rows take the ancestral draw from ``p(x_s | x_t)``; the other samplers refuse it.
- ``generator``: a ``torch.Generator``; with it, sampling is deterministic.
- ``callback(i, t, x_t, x0_hat)``: called after each step with the intermediate state.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .denoiser import Denoiser
from .names import SAMPLER_NAMES
from .schedules import NoiseSchedule
from .state_spaces import StateSpace
from .time_grids import check_spacing, time_grid

Callback = Callable[[int, float, Tensor, Tensor], None]


def step_coefficients(schedule: NoiseSchedule, t: Tensor) -> tuple[float, float, float]:
    """``(alpha, sigma, lambda)`` at a scalar grid time, as Python floats (float64 math).

    A grid's last time, 0, is the data itself: ``(1, 0, inf)``, so every sampler's last step returns
    its data estimate. (``polynomial_2`` keeps ``sigma = 0.003`` at t = 0; stepping there would keep
    90 % of the noise left at t = 1/T, a network evaluation spent on almost nothing.)"""
    if float(t) == 0.0:
        return 1.0, 0.0, float("inf")
    return float(schedule.alpha(t)), float(schedule.sigma(t)), float(schedule.log_snr(t))


@dataclass(frozen=True)
class Step:
    """One step of a time grid, from ``t`` down to ``s < t``, with the schedule's coefficients at both ends
    (:func:`step_coefficients`: Python floats) and whether it is the grid's last step."""

    index: int
    t: Tensor  # 0-d float64
    s: Tensor
    alpha_t: float
    sigma_t: float
    lambda_t: float
    alpha_s: float
    sigma_s: float
    lambda_s: float
    last: bool


def grid_steps(schedule: NoiseSchedule, times: Tensor, progress: bool = False, name: str = "") -> Iterator[Step]:
    """The steps of the grid ``times`` ``(N + 1,)``, with a progress bar named ``name`` when ``progress``: the
    head every sampler loop shares, so that a sampler is only its update rule."""
    if not isinstance(times, Tensor) or times.dim() != 1 or len(times) < 2:
        raise TypeError("A sampler takes a time grid, a 1-D tensor of at least 2 times from 1 to 0 "
                        "(sci_diffusion.time_grids.time_grid or samplers.sampler_times build one).")
    times = times.to(torch.float64)
    pairs = list(zip(times[:-1], times[1:]))
    for i, (t, s) in tqdm(list(enumerate(pairs)), desc=name, disable=not progress, leave=False):
        yield Step(i, t, s, *step_coefficients(schedule, t), *step_coefficients(schedule, s), last=i == len(pairs) - 1)


def _denoise(denoiser: Denoiser, x: Tensor, t: Tensor, cond: Any) -> Tensor:
    return denoiser(x, t.to(torch.float32), cond)


def refuse_categorical(space: StateSpace, name: str) -> None:
    """Refuse a state with categorical parts (``categorical.py``): only ``ddpm``, ``dpmpp2m_sde`` and ``ddim`` step
    them (a draw from ``p(x_s | x_t)``)."""
    if space.categorical:
        raise ValueError(f"The {name} sampler has no update for a categorical variable such as bond orders; "
                         "use ddpm, dpmpp2m_sde or ddim.")


def ddpm_step(x: Tensor, x0: Tensor, a_t: float, s_t: float, a_s: float, s_s: float, noise: Tensor | None) -> Tensor:
    """One ancestral step from ``t`` to ``s < t``: a draw from ``q(x_s | x_t, x_0 = x0)``."""
    a_ts = a_t / a_s
    var_ts = s_t**2 - a_ts**2 * s_s**2
    mean = (a_ts * s_s**2 / s_t**2) * x + (a_s * var_ts / s_t**2) * x0
    if noise is None:
        return mean
    return mean + (var_ts * s_s**2 / s_t**2) ** 0.5 * noise


def ddim_step(x: Tensor, x0: Tensor, a_t: float, s_t: float, a_s: float, s_s: float, eta: float, noise: Tensor | None) -> Tensor:
    """One DDIM step (Song et al. 2021, Eq. 12) from ``t`` to ``s < t``.

    Its noise is ``eta`` times the ancestral step's standard deviation (:func:`ddpm_step`), which on a
    variance-preserving path is Song et al.'s ``sigma_t(eta)`` and holds on any Gaussian path (``paths.py``)."""
    eps = (x - a_t * x0) / s_t
    std = eta * (s_s / s_t) * max(s_t**2 - (a_t / a_s) ** 2 * s_s**2, 0.0) ** 0.5 if s_t > 0 else 0.0
    out = a_s * x0 + max(s_s**2 - std**2, 0.0) ** 0.5 * eps
    return out if (noise is None or std == 0) else out + std * noise


def ddpm(denoiser: Denoiser, x_T: Tensor, schedule: NoiseSchedule, times: Tensor, space: StateSpace, *,
         cond: Any = None, generator: torch.Generator | None = None, progress: bool = False,
         callback: Callback | None = None) -> Tensor:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) on any time grid; no noise on the last step."""
    x = x_T
    for step in grid_steps(schedule, times, progress, "ddpm"):
        x0 = _denoise(denoiser, x, step.t, cond)
        noise = None if step.last else space.noise(x, generator)
        x_s = space.project(ddpm_step(x, x0, step.alpha_t, step.sigma_t, step.alpha_s, step.sigma_s, noise))
        x = space.categorical_reverse(x, x0, x_s, step.t, step.s, generator)
        if callback:
            callback(step.index, float(step.s), x, x0)
    return x


def ddim(denoiser: Denoiser, x_T: Tensor, schedule: NoiseSchedule, times: Tensor, space: StateSpace, *,
         cond: Any = None, generator: torch.Generator | None = None, progress: bool = False,
         callback: Callback | None = None, eta: float = 0.0) -> Tensor:
    """DDIM (Song, Meng & Ermon 2021); ``eta = 0`` is deterministic, ``eta = 1`` is DDPM-like.

    Categorical rows (bond orders) have no deterministic update: they step ancestrally, a draw from ``p(x_s |
    x_t)`` as in :func:`ddpm`, while the Gaussian entries follow DDIM given them (the probability-flow ODE of the
    Gaussian part, with the categorical part's reverse jumps, keeps the joint marginals; a distilled student
    samples so)."""
    x = x_T
    for step in grid_steps(schedule, times, progress, "ddim"):
        x0 = _denoise(denoiser, x, step.t, cond)
        noise = space.noise(x, generator) if eta > 0 else None
        x_s = space.project(ddim_step(x, x0, step.alpha_t, step.sigma_t, step.alpha_s, step.sigma_s, eta, noise))
        x = space.categorical_reverse(x, x0, x_s, step.t, step.s, generator)
        if callback:
            callback(step.index, float(step.s), x, x0)
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


def dpmpp2m(denoiser: Denoiser, x_T: Tensor, schedule: NoiseSchedule, times: Tensor, space: StateSpace, *,
            cond: Any = None, generator: torch.Generator | None = None, progress: bool = False,
            callback: Callback | None = None) -> Tensor:
    """DPM-Solver++(2M), multistep in x0-prediction; first order on the first and last step. Its default grid
    is ``"logsnr"``, as DPM-Solver advises (``DEFAULT_SPACING``)."""
    return _dpmpp2m_loop(denoiser, x_T, schedule, times, space, cond, generator, progress, callback, False)


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


def dpmpp2m_sde(denoiser: Denoiser, x_T: Tensor, schedule: NoiseSchedule, times: Tensor, space: StateSpace, *,
                cond: Any = None, generator: torch.Generator | None = None, progress: bool = False,
                callback: Callback | None = None) -> Tensor:
    """SDE-DPM-Solver++(2M): the stochastic DPM-Solver++, one evaluation per step. Fresh noise at
    every step corrects the errors of an imperfect denoiser as ancestral sampling does, which the
    ODE solver (:func:`dpmpp2m`) cannot; first order and noise-free on the last step.

    Its default ``"quadratic"`` time grid (``DEFAULT_SPACING``) crowds the steps near t = 0, where a molecule's bond
    lengths are settled: on the bundled QM9 model it keeps more molecules stable than the
    ``"logsnr"`` grid (``benchmarks/molecules_qm9.py`` measures it)."""
    return _dpmpp2m_loop(denoiser, x_T, schedule, times, space, cond, generator, progress, callback, True)


def _dpmpp2m_loop(denoiser: Denoiser, x_T: Tensor, schedule: NoiseSchedule, times: Tensor, space: StateSpace,
                  cond: Any, generator: torch.Generator | None, progress: bool, callback: Callback | None,
                  stochastic: bool) -> Tensor:
    """The multistep loop shared by the ODE and SDE forms of DPM-Solver++(2M)."""
    if not stochastic:
        refuse_categorical(space, "dpmpp2m")
    x = x_T
    d_prev, h_prev = None, None
    for step in grid_steps(schedule, times, progress, "dpmpp2m_sde" if stochastic else "dpmpp2m"):
        h = step.lambda_s - step.lambda_t
        d0 = _denoise(denoiser, x, step.t, cond)
        d_used = None if step.last else d_prev
        if stochastic:
            noise = None if step.last else space.noise(x, generator)
            x_s = space.project(dpmpp_2m_sde_step(x, d0, d_used, step.sigma_t, step.alpha_s, step.sigma_s, h, h_prev, noise))
            x = space.categorical_reverse(x, d0, x_s, step.t, step.s, generator)  # their first-order ancestral step
        else:
            x = space.project(dpmpp_2m_step(x, d0, d_used, step.sigma_t, step.alpha_s, step.sigma_s, h, h_prev))
        d_prev, h_prev = d0, h
        if callback:
            callback(step.index, float(step.s), x, d0)
    return x


def heun(denoiser: Denoiser, x_T: Tensor, schedule: NoiseSchedule, times: Tensor, space: StateSpace, *,
         cond: Any = None, generator: torch.Generator | None = None, progress: bool = False,
         callback: Callback | None = None) -> Tensor:
    """Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1).

    Integrates ``dy/dsigma = (y - D(y; sigma)) / sigma`` in the variance-exploding variables
    ``y = x / alpha``, ``sigma = sigma_t / alpha_t``; Euler on the last step. NFE = 2 steps - 1.
    """
    refuse_categorical(space, "heun")
    y, a_s = None, None
    for step in grid_steps(schedule, times, progress, "heun"):
        a_t, a_s = step.alpha_t, step.alpha_s
        if y is None and a_t == 0:
            raise ValueError("heun integrates x / alpha, which does not exist where alpha = 0 (t = 1 of a "
                             "rectified-flow path); use ddim (Euler on the flow ODE) or dpmpp2m.")
        y = x_T / a_t if y is None else y
        sig_t, sig_s = step.sigma_t / a_t, step.sigma_s / a_s
        x0 = _denoise(denoiser, y * a_t, step.t, cond)
        d = (y - x0) / sig_t
        y_next = y + (sig_s - sig_t) * d
        if not step.last and sig_s > 0:
            x0_next = _denoise(denoiser, y_next * a_s, step.s, cond)
            d_next = (y_next - x0_next) / sig_s
            y_next = y + (sig_s - sig_t) * 0.5 * (d + d_next)
        y = space.project(y_next)
        if callback:
            callback(step.index, float(step.s), y * a_s, x0)
    return y * a_s


def pc(denoiser: Denoiser, x_T: Tensor, schedule: NoiseSchedule, times: Tensor, space: StateSpace, *,
       cond: Any = None, generator: torch.Generator | None = None, progress: bool = False,
       callback: Callback | None = None, corrector_steps: int = 1, snr: float = 0.16) -> Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Algorithm 5 for VP SDEs).

    Predictor: an ancestral step. Corrector: ``corrector_steps`` Langevin steps at the new time
    with step size ``2 a (snr sigma_s)^2``: Song et al.'s ``2 a (snr ||z|| / ||score||)^2`` with the
    score at its noise-level norm ``||z|| / sigma_s``, so that no sample's step depends on the others
    in its batch (their code averages measured norms over the batch); ``a = alpha_bar_t / alpha_bar_s``
    is the coarse-step analogue of their ``1 - beta_i``.
    """
    refuse_categorical(space, "pc")
    x = x_T
    for step in grid_steps(schedule, times, progress, "pc"):
        a_t, s_t, a_s, s_s = step.alpha_t, step.sigma_t, step.alpha_s, step.sigma_s
        x0 = _denoise(denoiser, x, step.t, cond)
        x = space.project(ddpm_step(x, x0, a_t, s_t, a_s, s_s, None if step.last else space.noise(x, generator)))
        if not step.last and s_s > 1e-3:
            # Song et al.'s step 2 a (snr ||z|| / ||score||)^2 with the score at its noise-level norm,
            # ||score|| = ||z|| / sigma_s: one step size for every sample. Their code measures both norms
            # and averages them over the batch, which makes a sample depend on the batch it is in.
            langevin = 2 * (a_t**2 / a_s**2) * (snr * s_s) ** 2
            for _ in range(corrector_steps):
                x0_s = _denoise(denoiser, x, step.s, cond)
                score = -(x - a_s * x0_s) / s_s**2
                z = space.noise(x, generator)
                x = space.project(x + langevin * score + (2 * langevin) ** 0.5 * z)
        if callback:
            callback(step.index, float(step.s), x, x0)
    return x


def consistency(denoiser: Denoiser, x_T: Tensor, schedule: NoiseSchedule, times: Tensor, space: StateSpace, *,
                cond: Any = None, generator: torch.Generator | None = None, progress: bool = False,
                callback: Callback | None = None) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1) of a
    consistency-distilled student (``consistency.py``): at each grid time ``t`` the data estimate ``x0 = f(x, t)``,
    then a fresh draw of the forward process at the next time ``s``, ``x_s = alpha_s x0 + sigma_s z`` with ``z`` from
    the space (so a zero centre of mass stays zero); categorical rows are drawn from ``q(x_s | x_0)`` with ``x0``'s
    class probabilities. The last step (``s = 0``) returns the data estimate. One evaluation per step; for a
    student only (``DISTILLED_SAMPLERS``): an ordinary denoiser's estimate is a posterior mean, not a sample."""
    x = x_T
    for step in grid_steps(schedule, times, progress, "consistency"):
        x0 = _denoise(denoiser, x, step.t, cond)
        x_s = step.alpha_s * x0
        if step.sigma_s > 0:
            x_s = x_s + step.sigma_s * space.noise(x, generator)
        x = space.categorical_forward(space.project(x_s), x0, step.s, generator)
        if callback:
            callback(step.index, float(step.s), x, x0)
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {"ddpm": ddpm, "ddim": ddim, "dpmpp2m": dpmpp2m,
                                               "dpmpp2m_sde": dpmpp2m_sde, "heun": heun, "pc": pc}


assert tuple(SAMPLERS) == SAMPLER_NAMES  # the CLI offers the names before it imports torch

# Each sampler's default time grid (``time_grids.SPACINGS``): uniform in t for the ancestral, DDIM and PC
# samplers (DDPM/DDIM practice), uniform in log-SNR for the ODE solvers (DPM-Solver's advice), and quadratic
# for the stochastic DPM-Solver++ (its steps crowd near t = 0, where a molecule's bond lengths settle).
DEFAULT_SPACING: dict[str, str] = {"ddpm": "uniform", "ddim": "uniform", "dpmpp2m": "logsnr",
                                   "dpmpp2m_sde": "quadratic", "heun": "logsnr", "pc": "uniform"}
assert tuple(DEFAULT_SPACING) == SAMPLER_NAMES

# Samplers of distilled students only (``distillation.distilled_times`` refuses them for any other model), kept
# out of SAMPLERS, which every model takes, and out of the CLI's SAMPLER_NAMES; with their default spacing.
CONSISTENCY_SAMPLER = "consistency"
DISTILLED_SAMPLERS: dict[str, Callable[..., Tensor]] = {CONSISTENCY_SAMPLER: consistency}
DISTILLED_SPACING: dict[str, str] = {CONSISTENCY_SAMPLER: "uniform"}


def get_sampler(name: str) -> Callable[..., Tensor]:
    """Look a sampler up by its CLI name (``ddpm``, ``ddim``, ``dpmpp2m``, ``dpmpp2m_sde``, ``heun``, ``pc``), or a
    distilled student's (``consistency``, :data:`DISTILLED_SAMPLERS`)."""
    found = SAMPLERS.get(name) or DISTILLED_SAMPLERS.get(name)
    if found is None:
        raise ValueError(f"Unknown sampler {name!r}; choose one of {', '.join([*SAMPLERS, *DISTILLED_SAMPLERS])}.")
    return found


def resolve_spacing(sampler: str, spacing: str | None = None) -> str:
    """The time grid a run of ``sampler`` uses: ``spacing``, or the sampler's default when None
    (the one place the default is filled in, so that what a run records is what it used).

    Raises:
        ValueError: an unknown sampler or spacing (one sentence each), so a command can check its
            ``--sampler`` and ``--spacing`` before it loads a model.
    """
    get_sampler(sampler)
    if spacing is None:
        return {**DEFAULT_SPACING, **DISTILLED_SPACING}[sampler]
    check_spacing(spacing)
    return spacing


def sampler_times(sampler: str, schedule: NoiseSchedule, steps: int, spacing: str | None = None) -> Tensor:
    """The time grid ``(steps + 1,)`` float64 a run of ``sampler`` steps through: ``steps`` laid out by
    ``spacing``, or by the sampler's default (:data:`DEFAULT_SPACING`) when None. What ``--steps`` and
    ``--spacing`` turn into before any sampler runs.

    Raises:
        ValueError: an unknown sampler or spacing, or a step count that is not a whole number >= 1.
    """
    return time_grid(schedule, steps, resolve_spacing(sampler, spacing))


def function_evaluations(name: str, steps: int, corrector_steps: int = 1) -> int:
    """Network evaluations a sampler spends for ``steps`` steps."""
    return {"heun": 2 * steps - 1, "pc": steps + corrector_steps * max(steps - 1, 0)}.get(name, steps)
