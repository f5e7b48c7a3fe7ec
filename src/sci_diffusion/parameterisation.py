"""The forward process ``q(x_t | x_0)``, the eps / x0 / v parameterisations, their loss weights and the
masked mean error the losses (``losses.py``) reduce to.

With ``x_t = alpha_t x_0 + sigma_t eps`` (``alpha^2 + sigma^2 = 1``):

- eps-prediction predicts ``eps``;
- x0-prediction predicts ``x_0``;
- v-prediction (Salimans & Ho 2022) predicts ``v = alpha_t eps - sigma_t x_0``.

``alpha`` and ``sigma`` are tensors that broadcast against ``x`` (see ``StateSpace.expand``).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Prediction = Literal["eps", "x0", "v"]
PREDICTIONS = ("eps", "x0", "v")


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


LOSS_WEIGHTINGS = ("none", "min_snr", "clipped_snr", "snr")


def loss_weight(snr: Tensor, prediction: Prediction, kind: str = "none", gamma: float | None = None) -> Tensor:
    """Per-sample weight on the squared error of a ``prediction``-type network, from ``snr = alpha^2/sigma^2``.

    A weighting other than ``none`` is a weight ``w(SNR)`` on the x0 error, carried over to the
    prediction's own error: the eps error is ``SNR`` times the x0 error and the v error ``SNR + 1``
    times it, so the weight is ``w / SNR`` for eps, ``w / (SNR + 1)`` for v and ``w`` for x0.

    - ``none``: 1, the prediction's own MSE;
    - ``min_snr``: ``w = min(SNR, gamma)``, Min-SNR-gamma (Hang et al. 2023; gamma 5 when None), as diffusers'
      training scripts apply it: ``min(SNR, gamma)`` for x0, ``min(SNR, gamma) / SNR`` for eps and
      ``min(SNR, gamma) / (SNR + 1)`` for v;
    - ``clipped_snr``: ``w = clip(SNR, 0.05, gamma)``, EQGAT-diff's time weighting of its x0 loss
      (Le et al. 2024; its ceiling gamma is 1.5, the default when None), which also keeps a floor on the
      noisiest steps. A higher ceiling weighs the nearly clean steps, where bond lengths are settled, more;
    - ``snr``: ``w = SNR``, the x0 error weighted by SNR, which is the plain eps error.

    Returns a float32 tensor of ``snr``'s shape.
    """
    if kind == "none":
        return torch.ones_like(snr, dtype=torch.float32)
    if kind == "min_snr":
        w = snr.clamp(max=5.0 if gamma is None else gamma)
    elif kind == "clipped_snr":
        w = snr.clamp(min=0.05, max=1.5 if gamma is None else gamma)
    elif kind == "snr":
        w = snr
    else:
        raise ValueError(f"Unknown loss weighting {kind!r}; choose one of {', '.join(LOSS_WEIGHTINGS)}.")
    per_prediction = {"x0": 1.0, "eps": snr, "v": snr + 1.0}
    if prediction not in per_prediction:
        raise ValueError(f"Unknown prediction type {prediction!r}; choose eps, x0 or v.")
    return (w / per_prediction[prediction]).float()


def masked_mean_error(
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
