"""Conditional guidance as denoiser wrappers: each takes a denoiser and returns a denoiser."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .samplers import Denoiser
from .schedules import NoiseSchedule


class ClassifierFreeGuidance:
    """Classifier-free guidance (Ho & Salimans 2022), diffusers' convention:
    ``D = D(x, t, null) + w (D(x, t, cond) - D(x, t, null))``.

    ``w = 1`` is the plain conditional model, ``w = 0`` the unconditional one. Mixing x0 estimates
    equals mixing eps estimates, since both are affine in each other at fixed ``x_t``.
    """

    def __init__(self, denoiser: Denoiser, scale: float, null_cond: Any = None) -> None:
        self.denoiser, self.scale, self.null_cond = denoiser, scale, null_cond

    def __call__(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if self.scale == 1.0:
            return self.denoiser(x_t, t, cond)
        uncond = self.denoiser(x_t, t, self.null_cond)
        if self.scale == 0.0:
            return uncond
        return uncond + self.scale * (self.denoiser(x_t, t, cond) - uncond)


class PropertyGradientGuidance:
    """Gradient guidance on a differentiable property (EEGSDE style, Bao et al. 2023).

    Adds ``-scale * grad_x ||f(x_t, t) - target||^2`` to the score, which moves the x0 estimate by
    ``-scale * sigma_t^2 / alpha_t * grad``. The gradient is projected (e.g. onto zero centre of
    mass) by ``project`` before use.

    Args:
        denoiser: the denoiser to guide.
        property_fn: ``f(x_t, t, cond) -> (num_samples,)`` or ``(num_samples, P)`` predictions.
        target: broadcastable to ``property_fn``'s output.
        scale: guidance strength (0 = none).
        schedule: gives ``alpha_t`` and ``sigma_t``.
        project: the state space's projection, or None.
    """

    def __init__(self, denoiser: Denoiser, property_fn: Callable[[Tensor, Tensor, Any], Tensor], target: Tensor,
                 scale: float, schedule: NoiseSchedule, project: Callable[[Tensor], Tensor] | None = None) -> None:
        self.denoiser, self.property_fn, self.target = denoiser, property_fn, target
        self.scale, self.schedule, self.project = scale, schedule, project

    def __call__(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        x0 = self.denoiser(x_t, t, cond)
        if self.scale == 0:
            return x0
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            energy = (self.property_fn(x, t, cond) - self.target).pow(2).sum()
            (grad,) = torch.autograd.grad(energy, x)
        if self.project is not None:
            grad = self.project(grad)
        alpha = self.schedule.alpha(t).to(x_t.dtype)
        sigma = self.schedule.sigma(t).to(x_t.dtype)
        return x0 - self.scale * sigma**2 / alpha * grad
