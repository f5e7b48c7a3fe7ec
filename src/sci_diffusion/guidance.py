"""Conditional guidance as denoiser wrappers: each takes a denoiser and returns a denoiser."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .denoiser import Denoiser
from .schedules import NoiseSchedule

PairedDenoiser = Callable[[Tensor, Tensor, Any, Any], "tuple[Tensor, Tensor]"]


def classifier_free_passes(scale: float) -> int:
    """Network passes per step of classifier-free guidance at weight ``scale``: one at 0 (the
    unconditional model) and 1 (the conditional model), two (conditional and unconditional,
    stacked into one batch where the domain can) otherwise."""
    return 1 if scale in (0.0, 1.0) else 2


def check_interval(interval: Any) -> tuple[float, float]:
    """A guidance interval ``(t_low, t_high)`` as two floats; ValueError unless ``0 <= t_low < t_high <= 1``
    (NaN and a wrong number of values included)."""
    low, high = (float(v) for v in interval)
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"A guidance interval needs 0 <= t_low < t_high <= 1, not {tuple(interval)}.")
    return low, high


class ClassifierFreeGuidance:
    """Classifier-free guidance (Ho & Salimans 2022), diffusers' convention:
    ``D = D(x, t, null) + w (D(x, t, cond) - D(x, t, null))``.

    ``w = 1`` is the plain conditional model, ``w = 0`` the unconditional one. Mixing x0 estimates
    equals mixing eps estimates, since both are affine in each other at fixed ``x_t``.

    Args:
        denoiser: the conditional denoiser.
        scale: the guidance weight ``w``.
        null_cond: the condition that means "none" (None: the denoiser's own default).
        paired: optional ``f(x_t, t, cond, null_cond) -> (D_cond, D_null)`` that evaluates both
            predictions in one network call (the samples stacked into one batch), which a domain
            supplies because only it knows how its samples stack (images along dim 0, graphs
            through their batch vector). Without it, the denoiser is called twice.
        interval: the diffusion times ``(t_low, t_high)``, in [0, 1], at which guidance applies
            (Kynkaanniemi et al. 2024, "Applying guidance in a limited interval"); at other times the
            plain conditional prediction is returned, at the cost of one network pass instead of two.
            Default: every time.
    """

    def __init__(self, denoiser: Denoiser, scale: float, null_cond: Any = None,
                 paired: PairedDenoiser | None = None, interval: tuple[float, float] = (0.0, 1.0)) -> None:
        self.denoiser, self.scale, self.null_cond, self.paired = denoiser, scale, null_cond, paired
        self.interval = check_interval(interval)

    def guides_at(self, t: Tensor) -> bool:
        """Whether guidance applies at time ``t`` (0-d, or one time per sample that all agree on the interval)."""
        t = torch.as_tensor(t)
        inside = (t >= self.interval[0]) & (t <= self.interval[1])
        if bool(inside.any()) != bool(inside.all()):
            raise ValueError("A limited guidance interval needs the samples of one call on the same side of its "
                             "bounds; these times straddle them.")
        return bool(inside.all())

    def __call__(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if self.scale == 1.0 or (self.scale != 0.0 and not self.guides_at(t)):
            return self.denoiser(x_t, t, cond)
        if self.scale == 0.0:
            return self.denoiser(x_t, t, self.null_cond)
        if self.paired is not None:
            conditional, uncond = self.paired(x_t, t, cond, self.null_cond)
        else:
            conditional, uncond = self.denoiser(x_t, t, cond), self.denoiser(x_t, t, self.null_cond)
        return uncond + self.scale * (conditional - uncond)


class PropertyGradientGuidance:
    """Gradient guidance on a differentiable property (EEGSDE style, Bao et al. 2023).

    Adds ``-scale * grad_x ||f(x_t, t) - target||^2`` to the score, which moves the x0 estimate by
    ``-scale * sigma_t^2 / alpha_t * grad``. The gradient is projected (e.g. onto zero centre of
    mass) by ``project`` before use.

    Args:
        denoiser: the denoiser to guide.
        property_fn: ``f(x_t, t, cond) -> (num_samples,)`` or ``(num_samples, P)`` predictions.
        target: broadcastable to ``property_fn``'s output, or a function ``target(cond)`` that
            reads it from the condition (per-sample targets that travel with the condition).
        scale: guidance strength (0 = none).
        schedule: gives ``alpha_t`` and ``sigma_t``.
        project: the state space's projection, or None.
    """

    def __init__(self, denoiser: Denoiser, property_fn: Callable[[Tensor, Tensor, Any], Tensor],
                 target: Tensor | Callable[[Any], Tensor],
                 scale: float, schedule: NoiseSchedule, project: Callable[[Tensor], Tensor] | None = None) -> None:
        self.denoiser, self.property_fn, self.target = denoiser, property_fn, target
        self.scale, self.schedule, self.project = scale, schedule, project

    def __call__(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        x0 = self.denoiser(x_t, t, cond)
        if self.scale == 0:
            return x0
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            target = self.target(cond) if callable(self.target) else self.target
            energy = (self.property_fn(x, t, cond) - target).pow(2).sum()
            (grad,) = torch.autograd.grad(energy, x)
        if self.project is not None:
            grad = self.project(grad)
        alpha = self.schedule.alpha(t).to(x_t.dtype)
        sigma = self.schedule.sigma(t).to(x_t.dtype)
        return x0 - self.scale * sigma**2 / alpha * grad
