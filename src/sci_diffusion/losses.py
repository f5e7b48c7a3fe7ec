"""Training losses: small callables apart from the training loop, as NVlabs/edm's ``training/loss.py``.

A loss is called as ``loss_fn(model, batch, generator=None) -> scalar`` with ``model`` the
:class:`~sci_diffusion.module.DiffusionModule` (its network is ``model(x_t, t, cond, context)``) and
``batch`` the model's :class:`~sci_diffusion.module.DiffusionBatch`. ``DiffusionModule.build_loss``
chooses one; a domain overrides it for a loss of its own (the MRI-to-CT regression, the residual
model's extra scale term).

:class:`DenoisingLoss` is the diffusion loss. Everything that happens between a clean batch and the
regression error lives in it, in this order:

1. the time draw: ``t`` uniform on ``{1..T} / T``, one per sample;
2. the forward process ``x_t = alpha_t x0 + sigma_t eps``, with ``eps`` from the batch's state space, paired with
   the data by the loss's ``coupling`` where it has one (identity by default; a flow's aligned coupling);
3. the known mask: entries given as the condition are seen clean and left out of the loss;
4. condition dropout (classifier-free guidance), in training only;
5. the prediction's target (eps, x0 or v) and its SNR weighting, then the masked mean error.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .parameterisation import loss_weight, masked_mean_error, target_for
from .paths import GaussianPath, check_prediction

if TYPE_CHECKING:  # annotations only: module.py imports this file
    from .module import DiffusionBatch, DiffusionModule


@dataclass
class NoisedBatch:
    """One draw of the forward process for a batch: what the network sees and what it should answer.

    Attributes:
        t: ``(num_samples,)`` float64 times in ``(0, 1]``.
        x_t: the noised state, ``x0``'s shape, with known entries clean.
        eps: the noise drawn (after the coupling), ``x0``'s shape.
        alpha, sigma: the schedule at ``t``, broadcastable to ``x0``.
        mask: where the loss is averaged (the batch's mask, without the known entries), or None: everywhere.
    """

    t: Tensor
    x_t: Tensor
    eps: Tensor
    alpha: Tensor
    sigma: Tensor
    mask: Tensor | None


@dataclass
class DenoisingLoss:
    """The diffusion training loss: eps / x0 / v regression at a random time (module docstring, steps 1-5).

    Args:
        schedule: the noise schedule the model is trained with, or a rectified-flow path (``paths.py``).
        prediction: what the network predicts, ``eps``, ``x0`` or ``v``.
        kind: ``l2`` or ``l1``.
        weighting: ``none``, ``min_snr``, ``clipped_snr`` or ``snr`` (``parameterisation.loss_weight``).
        cond_dropout: probability of replacing a sample's condition by the null condition in training
            (``model.drop_condition``), so that one network also learns the unconditional prediction.
        group_dropout: probability of dropping each of the condition's ``model.condition_groups`` groups (the
            properties of a multi-property condition) on its own, independently and besides ``cond_dropout``, so
            that the network learns every subset of them: ``--condition gap=6.5`` on a six-property model.
        coupling: ``coupling(eps, x0, batch) -> eps``: pairs each sample's noise draw with its data (e.g. a
            rotation- and permutation-aligned coupling for flow matching), returning noise of ``eps``'s shape
            that still lies in the batch's space; None: independent noise, as the diffusion's forward process
            has it. Only the noise changes, never the data.
        max_time: times are drawn from ``(0, max_time]`` only (the grid steps ``1 .. ceil(max_time T)``): 1 trains
            every noise level; 0.15 a low-noise expert (Balaji et al. 2022, eDiff-I's experts), which samples only
            the last stretch of a run (``denoiser.LowNoiseExpert``), so all of its training goes to fine detail.
    """

    schedule: GaussianPath
    prediction: str = "eps"
    kind: str = "l2"
    weighting: str = "none"
    cond_dropout: float = 0.0
    group_dropout: float = 0.0
    coupling: Callable[[Tensor, Tensor, DiffusionBatch], Tensor] | None = None
    weighting_gamma: float | None = None  # the weighting's gamma (``loss_weight``); None: its default
    max_time: float = 1.0

    def __post_init__(self) -> None:
        check_prediction(self.schedule, self.prediction)
        if not 0.0 < self.max_time <= 1.0:
            raise ValueError(f"A loss draws its times from (0, max_time] with max_time in (0, 1], not {self.max_time!r}.")

    def __call__(self, model: DiffusionModule, batch: DiffusionBatch, generator: torch.Generator | None = None) -> Tensor:
        """The mean loss over ``batch`` (a 0-d tensor); ``generator`` fixes every draw (validation)."""
        noised = self.noise(batch, generator)
        cond = self.condition(model, batch, generator)
        pred = model(noised.x_t, noised.t.float(), cond, batch.context)
        return self.terms(pred, batch, noised, noised.mask)

    def terms(self, pred: Tensor, batch: DiffusionBatch, noised: NoisedBatch, mask: Tensor | None) -> Tensor:
        """The loss of the prediction ``pred``: the SNR-weighted error against the target over the ``mask``ed-in
        entries. A subclass adds terms of its own (the categorical cross-entropy) around this one."""
        target = target_for(self.prediction, batch.x0, noised.eps, noised.alpha, noised.sigma)
        snr = torch.exp(2 * self.schedule.log_snr(noised.t))
        weight = batch.space.expand(loss_weight(snr, self.prediction, self.weighting, self.weighting_gamma), batch.x0)
        return masked_mean_error(pred, target, weight=weight, mask=mask, kind=self.kind)

    def noise(self, batch: DiffusionBatch, generator: torch.Generator | None = None) -> NoisedBatch:
        """Steps 1-3: a time per sample, the noised state and the mask the loss averages in."""
        last = max(1, math.ceil(self.max_time * self.schedule.T - 1e-9))
        step = torch.randint(1, last + 1, (batch.num_samples,), generator=generator,
                             device=_draw_device(generator, batch.x0)).to(batch.x0.device)
        return self.noise_at(batch, step.double() / self.schedule.T, generator)

    def noise_at(self, batch: DiffusionBatch, t: Tensor, generator: torch.Generator | None = None) -> NoisedBatch:
        """Steps 2-3 at given times ``t`` ``(num_samples,)`` float64 (a distillation loss picks its own)."""
        x0, space = batch.x0, batch.space
        alpha, sigma = space.expand(self.schedule.alpha(t), x0), space.expand(self.schedule.sigma(t), x0)
        eps = space.noise(x0, generator)
        if self.coupling is not None:
            eps = self.coupling(eps, x0, batch)
        x_t, mask = alpha * x0 + sigma * eps, batch.mask
        if batch.known is not None:
            known = batch.known.expand_as(x0).bool()
            x_t = torch.where(known, x0, x_t)
            unknown = (~known).to(x0.dtype)
            mask = unknown if mask is None else mask * unknown
        return NoisedBatch(t, x_t, eps, alpha, sigma, mask)

    def condition(self, model: DiffusionModule, batch: DiffusionBatch, generator: torch.Generator | None = None) -> Any:
        """Step 4: the batch's condition with parts dropped (``model.drop_condition``), in training only: each
        sample's whole condition with probability ``cond_dropout``, and, where the model's condition has
        several groups, each group on its own with probability ``group_dropout``."""
        if batch.cond is None or not model.training or (self.cond_dropout <= 0 and self.group_dropout <= 0):
            return batch.cond
        device, n, groups = _draw_device(generator, batch.x0), batch.num_samples, model.condition_groups
        drop = (torch.rand(n, generator=generator, device=device) < self.cond_dropout)[:, None]
        if groups > 1 and self.group_dropout > 0:
            drop = drop | (torch.rand(n, groups, generator=generator, device=device) < self.group_dropout)
        return model.drop_condition(batch.cond, drop.expand(n, groups).to(batch.x0.device), batch)


def _draw_device(generator: torch.Generator | None, x0: Tensor) -> torch.device:
    """Where a random draw happens: on ``generator``'s device where one is given (validation: a fixed CPU
    generator), else on the data's, so that with the schedule's tables there too a GPU step never waits on
    the host."""
    return generator.device if generator is not None else x0.device
