"""Adapting a network to the sampler's view of it: a denoiser ``D(x_t, t, cond) -> x0_hat``.

Following k-diffusion, samplers only ever see an x0-predicting denoiser; this small wrapper
turns an eps-, x0- or v-predicting network into one.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .parameterisation import Prediction, to_x0
from .schedules import NoiseSchedule
from .state_spaces import StateSpace

Network = Callable[[Tensor, Tensor, Any], Tensor]
Denoiser = Callable[[Tensor, Tensor, Any], Tensor]
"""What every sampler calls: ``D(x_t, t, cond) -> x0_hat`` (``t`` a 0-d tensor in [0, 1])."""


class PredictionDenoiser:
    """``D(x_t, t, cond) = to_x0(net(x_t, t, cond))`` for a network of parameterisation ``prediction``.

    Args:
        net: ``net(x_t, t, cond) -> prediction`` with ``t`` a 0-d float tensor in [0, 1].
        schedule: the schedule the network was trained with.
        prediction: ``"eps"``, ``"x0"`` or ``"v"``.
        clip: optional ``(lo, hi)`` clamp on the x0 estimate (images in [-1, 1]); numbers, or tensors
            that broadcast against x0 for a bound per element.
    """

    def __init__(self, net: Network, schedule: NoiseSchedule, prediction: Prediction,
                 clip: tuple[float, float] | None = None) -> None:
        self.net, self.schedule, self.prediction, self.clip = net, schedule, prediction, clip

    def __call__(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        alpha = self.schedule.alpha(t).to(x_t.dtype)
        sigma = self.schedule.sigma(t).to(x_t.dtype)
        x0 = to_x0(self.net(x_t, t, cond), x_t, alpha, sigma, self.prediction)
        return x0 if self.clip is None else x0.clamp(*self.clip)


def failed_samples(x: Tensor, space: StateSpace) -> Tensor:
    """``(num_samples,)`` bool: the samples of ``space`` with any non-finite entry in the state ``x``."""
    return space.sample_sum((~torch.isfinite(x)).to(x.dtype)) > 0


def isolate_failed_samples(network: Callable[..., Tensor], space: StateSpace) -> Callable[..., Tensor]:
    """Wrap ``network(x, *args)`` (a denoiser, or a decoder of the sampled state) so that a sample
    whose state has gone non-finite cannot spoil the others in its batch.

    The network sees zeros in place of a failed sample's rows, and that sample's output is NaN, so
    it stays failed (and is counted so) to the end. Without this, one diverged molecule took its
    neighbours with it: oneDNN's bfloat16 matrix product on CPUs with AMX writes NaN into the row
    before a block of NaN rows (``Linear(7, 128)`` on 1,780 rows with rows 1441-1448 NaN also spoils
    row 1440; float32 does not), so the NaN crept one molecule back per step (molecules 2780, then
    2779, then 2778 of ``sample molecules --num 3000 --seed 0``). Everything runs on the device,
    without a host synchronisation.
    """
    def isolated(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        failed = space.expand(failed_samples(x, space), x) > 0  # broadcastable over x's rows, and the output's
        out = network(torch.where(failed, torch.zeros((), dtype=x.dtype, device=x.device), x), *args, **kwargs)
        return out.masked_fill(failed, float("nan"))

    return isolated


class LowNoiseExpert:
    """Two denoisers over one run: ``expert`` at times ``t <= below``, ``base`` above (the experts of eDiff-I,
    Balaji et al. 2022). The expert is a model trained on the low-noise end only (``losses.DenoisingLoss.max_time``),
    so all of its capacity goes to the fine detail a run settles last (a molecule's bond lengths and angles); the
    samplers, restarts (``restart.py``) and polishing (``polish.py``) call it as any denoiser.

    Args:
        base, expert: denoisers ``D(x_t, t, cond) -> x0_hat`` of the same state.
        below: the time at and under which the expert answers, in ``(0, 1)``: at most the ``max_time`` it was
            trained to, where it knows nothing above.
    """

    def __init__(self, base: Denoiser, expert: Denoiser, below: float) -> None:
        if not 0.0 < below < 1.0:
            raise ValueError(f"The low-noise expert answers below a time in (0, 1), not {below!r}.")
        self.base, self.expert, self.below = base, expert, below

    def __call__(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if t.dim() != 0:
            raise ValueError("The low-noise expert switches on one time per call, a 0-d t, as the samplers pass it.")
        # t comes as float32 (0.15 is 0.15000000596): a tolerance far under any grid spacing
        return (self.expert if float(t) <= self.below + 1e-6 else self.base)(x_t, t, cond)
