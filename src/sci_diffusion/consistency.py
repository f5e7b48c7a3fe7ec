"""Consistency distillation (Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models", Algorithm 2: CD with a
one-step ODE solver of the teacher) through the state spaces (zero centre of mass, masks, known entries,
categorical rows), beside progressive distillation (``distillation.py``).

A consistency function ``f(x_t, t)`` maps every point of a probability-flow trajectory to the trajectory's
origin at ``t = 0``; a student that is one can sample in one step, or in a few (:func:`~sci_diffusion.samplers.
consistency`, their Algorithm 1). Here the student's consistency function is its **data estimate**: ``f(x, t) =
D(x, t)`` for ``t > 0`` (the network's x0, whatever its parameterisation), and ``f(x, 0) = x``, the boundary
condition (:func:`consistency_function`; a grid's last time is 0, where no network is evaluated, as every sampler's
last step returns its data estimate).

One training call (:class:`ConsistencyDistillationLoss`), with ``times`` the teacher's grid ``(N + 1,)`` float64
from 1 to 0 (``N`` intervals) and a batch of clean data ``x0`` in its space:

- an interval ``n`` uniform in ``0 .. N - 1``, one for the whole batch (the denoisers take one time per call, as
  the samplers call them): ``t = times[n] > t' = times[n + 1] >= 0``;
- ``x_t`` from the student's own forward process (``base.noise_at``: the space's noise, so zero centre of mass
  holds; known entries clean; categorical rows drawn from ``q(x_t | x0)``), and the condition both networks see;
- ``x_t'``: **one** teacher DDIM step (``eta = 0``, the core's :func:`~sci_diffusion.samplers.ddim` on the grid
  ``(t, t')``, projected into the space) from ``x_t`` (:func:`teacher_step`); its categorical rows are drawn from
  the teacher's ``p(x_t' | x_t)``;
- the target ``f_target(x_t', t')``: the *target network's* data estimate at ``x_t'`` with known entries put back
  clean, without gradient; at ``t' = 0`` it is ``x_t'`` itself (the boundary condition: there the target is the
  teacher's DDIM step to 0, its own data estimate at ``t``);
- the loss: ``lambda(t) d(f_student(x_t, t), target)`` with ``d`` the squared L2 distance (their ``d(x, y) = ||x -
  y||^2``) averaged over the entries the student's own loss averages (its mask, without known entries and without
  categorical rows) and ``lambda = 1`` (their CD weighting).

The target network is ``theta^- <- mu theta^- + (1 - mu) theta``, an exponential moving average of the student's
weights with decay ``mu`` (``target_decay``), updated at each training call before the loss is computed (so after
each optimiser step: Algorithm 2's order) and started from the student's weights; it lives beside the student in the
loss (a dict of tensors, not in the student's checkpoint: a resumed run starts it again from the student's weights).
The default ``mu = 0.95`` is the paper's for CD; ``mu = 0`` makes it a stop-gradient copy of the student (no copy
is kept), Song & Dhariwal's later choice for consistency *training*; on the analytic mixture (exact teacher, 16
intervals, the test's warm start and 1,700 steps) it left the 4-step student 11.5 x the teacher's 50-step sliced W2
to the data, against 2.3 x with ``mu = 0.95``. The module's own EMA (Lightning's ``WeightAveraging``, the weights
that ship) is separate and unchanged.

The student's network should predict ``x0`` or ``v``: an eps-predicting network's data estimate ``(x - sigma
eps) / alpha`` has no bounded consistency function at ``t = 1``, where ``alpha`` is nearly 0.

Categorical entries (bond orders) have no deterministic step and no consistency function: there the student learns
the teacher's class probabilities ``p(x_0 | x_t)`` at ``t`` (cross-entropy with the teacher's probabilities as soft
labels, weighted as the student's own categorical loss), as progressive distillation does; the consistency sampler
draws their classes from the forward process at each re-noising.

A distilled student records its method (``DiffusionModule.distill_method = "consistency"``), its training grid
(``teacher_times``, ``(N + 1,)``) and its step count (``distill_steps``, ``k`` dividing ``N``); it samples with the
``consistency`` sampler on every ``N / k``-th point of its grid only (:func:`sampling_grid`,
``distillation.distilled_times``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .distillation import keep_clean
from .losses import DenoisingLoss
from .parameterisation import masked_mean_error
from .samplers import CONSISTENCY_SAMPLER, ddim
from .schedules import NoiseSchedule
from .state_spaces import StateSpace

if TYPE_CHECKING:  # annotations only: module.py imports this file
    from .denoiser import Denoiser
    from .module import DiffusionBatch, DiffusionModule

__all__ = ["CONSISTENCY_SAMPLER", "ConsistencyDistillationLoss", "consistency_function", "sampling_grid",
           "teacher_step"]


def consistency_function(denoiser: Denoiser, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
    """``f(x, t)``: the data estimate ``denoiser(x, t, cond)`` for ``t > 0`` and ``x`` itself at ``t = 0`` (the
    boundary condition ``f(x, 0) = x``), ``x``'s shape; ``t`` 0-d float64."""
    if float(t) == 0.0:
        return x
    return denoiser(x, t.to(torch.float32), cond)


def sampling_grid(times: Tensor, steps: int) -> Tensor:
    """A consistency student's sampling grid ``(steps + 1,)``: every ``N / steps``-th point of its training grid
    ``times`` ``(N + 1,)`` from 1 to 0, so that the sampler evaluates it at times it was trained at.

    Raises:
        ValueError: ``steps`` does not divide the grid's ``N`` intervals.
    """
    intervals = len(times) - 1
    if isinstance(steps, bool) or int(steps) != steps or steps < 1 or intervals % steps:
        raise ValueError(f"A consistency student trained on {intervals} intervals samples with a step count that "
                         f"divides {intervals}, not {steps!r}.")
    return times[::intervals // int(steps)].clone()


def teacher_step(teacher: Denoiser, x_t: Tensor, times: tuple[Tensor, Tensor], schedule: NoiseSchedule,
                 space: StateSpace, cond: Any = None, generator: torch.Generator | None = None,
                 clean: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """One teacher DDIM step ``x_t -> x_t'`` (the core's :func:`~sci_diffusion.samplers.ddim`, ``eta = 0``, on the
    grid ``(t, t')``), projected into ``space``.

    Args:
        teacher: the teacher's denoiser ``D(x, t, cond) -> x0_hat`` (class probabilities on categorical rows).
        x_t: the state at ``t``, as the space lays it out.
        times: 0-d float64 ``(t, t')`` with ``t > t' >= 0``.
        clean: ``(known, x0)``: entries the network sees clean at every time, put back in what the teacher sees.

    Returns:
        ``(x_t', x0_teacher)``, both ``x_t``'s shape: the state at ``t'`` (categorical rows drawn from the teacher's
        ``p(x_t' | x_t)``; known entries as the step leaves them: put them back before a network sees them) and the
        teacher's data estimate at ``t`` (its class probabilities on categorical rows).
    """
    estimates: list[Tensor] = []
    x_next = ddim(keep_clean(teacher, clean), x_t, schedule, torch.stack(list(times)), space, cond=cond,
                  generator=generator, callback=lambda i, s, x, x0: estimates.append(x0))
    return x_next, estimates[0]


@dataclass
class ConsistencyDistillationLoss:
    """Consistency distillation as a training loss ``loss_fn(model, batch, generator)`` (module docstring): the
    student ``model``'s data estimate at ``x_t`` learns the target network's at the teacher's one-step ``x_t'``.

    Args:
        base: the student's own diffusion loss, whose forward process (categorical rows included) and condition
            dropout draw ``x_t`` and the condition that the three networks see.
        times: the teacher's grid ``(N + 1,)`` float64 from 1 to 0, the student's training grid.
        teacher: ``teacher(context) -> Denoiser``: the teacher's denoiser for a batch's context (a module's
            ``denoiser`` method, or an exact one).
        categorical_weight: the weight of the categorical rows' cross-entropy (the student's own).
        target_decay: ``mu``, the target network's EMA decay (0: a stop-gradient copy of the student).
        target: ``theta^-``, the target network's weights by parameter name (kept by the loss; None: not yet made).
    """

    base: DenoisingLoss
    times: Tensor
    teacher: Callable[[Any], Denoiser]
    categorical_weight: float = 1.0
    target_decay: float = 0.95
    target: dict[str, Tensor] | None = field(default=None, repr=False)  # theta^-, when target_decay > 0

    def __post_init__(self) -> None:
        if len(self.times) < 2:
            raise ValueError("Consistency distillation needs a teacher grid of at least one interval.")
        if not 0.0 <= self.target_decay < 1.0:
            raise ValueError(f"The target network's decay is in [0, 1), not {self.target_decay}.")

    def __call__(self, model: DiffusionModule, batch: DiffusionBatch, generator: torch.Generator | None = None) -> Tensor:
        x0 = batch.x0
        n = int(torch.randint(0, len(self.times) - 1, (), generator=generator))
        t, t_next = self.times[n], self.times[n + 1]
        noised = self.base.noise_at(batch, t.expand(batch.num_samples).to(x0.device), generator)
        cond = self.base.condition(model, batch, generator)
        if model.training:
            self.update_target(model)
        target = self.target_for(model, batch, noised.x_t, (t, t_next), cond, generator)
        estimate = model.denoiser(batch.context)(noised.x_t, t.to(torch.float32), cond)
        gaussian = 1 - batch.space.categorical_mask(x0)
        mask = gaussian if noised.mask is None else noised.mask * gaussian
        loss = masked_mean_error(estimate, target.to(estimate.dtype), mask=mask)
        if batch.space.categorical:
            total, rows = batch.space.categorical_loss(estimate.float().clamp(min=1e-12).log(), target.float())
            loss = loss + self.categorical_weight * total / rows.clamp(min=1)
        return loss

    @torch.no_grad()
    def target_for(self, model: DiffusionModule, batch: DiffusionBatch, x_t: Tensor, times: tuple[Tensor, Tensor],
                   cond: Any = None, generator: torch.Generator | None = None) -> Tensor:
        """The student's target at ``x_t`` (``batch.x0``'s shape) for the interval ``times = (t, t')``: the target
        network's consistency function at the teacher's one-step ``x_t'`` (known entries clean), projected into the
        space (``x_t'`` itself at ``t' = 0``), and the teacher's class probabilities at ``t`` on categorical rows."""
        space, clean = batch.space, None if batch.known is None else (batch.known, batch.x0)
        x_next, teacher_x0 = teacher_step(self.teacher(batch.context), x_t, times, model.schedule, space, cond,
                                          generator, clean)
        with self.target_weights(model):
            target = consistency_function(keep_clean(model.denoiser(batch.context), clean), x_next, times[1], cond)
        return torch.where(space.categorical_mask(x_t).bool(), teacher_x0, space.project(target))

    @torch.no_grad()
    def update_target(self, model: torch.nn.Module) -> None:
        """``theta^- <- mu theta^- + (1 - mu) theta`` (started from the student's weights); nothing at ``mu = 0``.
        Called by the loss at each training call."""
        if self.target_decay == 0.0:
            return
        params = dict(model.named_parameters())
        if self.target is None or self.target.keys() != params.keys():
            self.target = {name: p.detach().clone() for name, p in params.items()}
            return
        for name, p in params.items():
            kept = self.target[name] = self.target[name].to(p.device, p.dtype)
            kept.lerp_(p.detach(), 1.0 - self.target_decay)

    @contextmanager
    def target_weights(self, model: torch.nn.Module) -> Iterator[None]:
        """The target network: ``model`` with ``theta^-`` swapped in for the block (its own weights with
        ``mu = 0``); use it without gradient."""
        if self.target_decay == 0.0 or self.target is None:
            yield
            return
        params = dict(model.named_parameters())
        live = {name: p.data for name, p in params.items()}
        try:
            for name, p in params.items():
                p.data = self.target[name]
            yield
        finally:
            for name, p in params.items():
                p.data = live[name]
