"""The state space of the slices of one volume, whose noise is correlated along the slices.

``PairedSliceSynthesis`` samples all axial slices of a synthetic subject together; drawing every slice's
noise independently would give slices that do not agree with each other. Here neighbouring slices
draw nearly the same noise and come out alike, slices a few centimetres apart draw independent noise.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from sci_diffusion.state_spaces import EuclideanSpace


def correlated_slice_noise(count: int, shape: Sequence[int], generator: torch.Generator | None,
                           correlation_slices: float = 4.0) -> Tensor:
    """Standard normal noise ``(count, *shape)`` for the slices of one volume, correlated along the slices.

    Independent anchor fields sit every ``correlation_slices`` slices; a slice's noise is the linear
    interpolation of its two anchors, rescaled to unit variance. Neighbouring slices then share most of
    their noise (correlation above 0.9 at 4 slices between anchors) and slices two anchors apart none.
    """
    anchors = int(math.ceil((count - 1) / correlation_slices)) + 1 if count > 1 else 1
    fields = torch.randn((anchors, *shape), generator=generator)
    position = torch.arange(count, dtype=torch.float32) / correlation_slices
    left = position.floor().long().clamp(max=anchors - 1)
    right = (left + 1).clamp(max=anchors - 1)
    w = (position - left.float()).view(-1, *([1] * len(shape)))
    mixed = (1.0 - w) * fields[left] + w * fields[right]
    return mixed / ((1.0 - w) ** 2 + w**2).sqrt()


class SliceCorrelatedSpace(EuclideanSpace):
    """Euclidean states of the slices of one volume ``(Z, C, H, W)``, whose noise is ``correlated_slice_noise``."""

    def __init__(self, correlation_slices: float = 4.0) -> None:
        super().__init__()
        self.correlation_slices = correlation_slices

    def noise(self, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return correlated_slice_noise(like.shape[0], like.shape[1:], generator, self.correlation_slices).to(like)
