"""Adapting a network to the sampler's view of it: a denoiser ``D(x_t, t, cond) -> x0_hat``.

Following k-diffusion, samplers only ever see an x0-predicting denoiser; this small wrapper
turns an eps-, x0- or v-predicting network into one.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from .parameterisation import Prediction, to_x0
from .schedules import NoiseSchedule

Network = Callable[[Tensor, Tensor, Any], Tensor]
Denoiser = Callable[[Tensor, Tensor, Any], Tensor]
"""What every sampler calls: ``D(x_t, t, cond) -> x0_hat`` (``t`` a 0-d tensor in [0, 1])."""


class PredictionDenoiser:
    """``D(x_t, t, cond) = to_x0(net(x_t, t, cond))`` for a network of parameterisation ``prediction``.

    Args:
        net: ``net(x_t, t, cond) -> prediction`` with ``t`` a 0-d float tensor in [0, 1].
        schedule: the schedule the network was trained with.
        prediction: ``"eps"``, ``"x0"`` or ``"v"``.
        clip: optional ``(lo, hi)`` clamp on the x0 estimate (images in [-1, 1]).
    """

    def __init__(self, net: Network, schedule: NoiseSchedule, prediction: Prediction,
                 clip: tuple[float, float] | None = None) -> None:
        self.net, self.schedule, self.prediction, self.clip = net, schedule, prediction, clip

    def __call__(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        alpha = self.schedule.alpha(t).to(x_t.dtype)
        sigma = self.schedule.sigma(t).to(x_t.dtype)
        x0 = to_x0(self.net(x_t, t, cond), x_t, alpha, sigma, self.prediction)
        return x0 if self.clip is None else x0.clamp(*self.clip)
