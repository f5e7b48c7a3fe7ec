"""The forward process ``q(x_t | x_0)``, the eps / x0 / v parameterisations, and the loss.

With ``x_t = alpha_t x_0 + sigma_t eps`` (``alpha^2 + sigma^2 = 1``):

- eps-prediction predicts ``eps``;
- x0-prediction predicts ``x_0``;
- v-prediction (Salimans & Ho 2022) predicts ``v = alpha_t eps - sigma_t x_0``.

``alpha`` and ``sigma`` are tensors that broadcast against ``x`` (see ``StateSpace.expand``).
"""
from __future__ import annotations

from typing import Literal

from torch import Tensor

Prediction = Literal["eps", "x0", "v"]
PREDICTIONS = ("eps", "x0", "v")


def q_sample(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Draw from ``q(x_t | x_0)`` given standard noise ``eps`` (already in the state space)."""
    return alpha * x0 + sigma * eps


def to_x0(pred: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, kind: Prediction) -> Tensor:
    """Convert a network output of parameterisation ``kind`` into an ``x_0`` estimate."""
    if kind == "x0":
        return pred
    if kind == "eps":
        return (x_t - sigma * pred) / alpha
    if kind == "v":
        return alpha * x_t - sigma * pred
    raise ValueError(f"Unknown prediction type {kind!r}; choose eps, x0 or v.")


def to_eps(pred: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, kind: Prediction) -> Tensor:
    """Convert a network output of parameterisation ``kind`` into an ``eps`` estimate."""
    if kind == "eps":
        return pred
    if kind == "x0":
        return (x_t - alpha * pred) / sigma
    if kind == "v":
        return sigma * x_t + alpha * pred
    raise ValueError(f"Unknown prediction type {kind!r}; choose eps, x0 or v.")


def target_for(kind: Prediction, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The regression target of parameterisation ``kind`` for a training pair."""
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "v":
        return alpha * eps - sigma * x0
    raise ValueError(f"Unknown prediction type {kind!r}; choose eps, x0 or v.")


def eps_from_x0(x0: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """``eps`` implied by an ``x_0`` estimate at ``x_t``."""
    return (x_t - alpha * x0) / sigma


def diffusion_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    mask: Tensor | None = None,
    kind: Literal["l2", "l1"] = "l2",
) -> Tensor:
    """Mean (weighted) squared or absolute error.

    Args:
        pred, target: same shape.
        weight: per-element weight broadcastable to ``pred`` (e.g. an SNR weight per sample).
        mask: 0/1 broadcastable to ``pred``; the mean runs over masked-in elements only.
    """
    err = (pred - target).pow(2) if kind == "l2" else (pred - target).abs()
    if weight is not None:
        err = err * weight
    if mask is None:
        return err.mean()
    mask = mask.expand_as(err).to(err.dtype)
    return (err * mask).sum() / mask.sum().clamp(min=1.0)
