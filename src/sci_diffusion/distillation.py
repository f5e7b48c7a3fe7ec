"""Progressive distillation (Salimans & Ho 2022, "Progressive distillation for fast sampling of diffusion
models"): a student that takes one deterministic DDIM step where its teacher takes two, so each round halves the
steps, through the state spaces (zero centre of mass, categorical rows, images).

One round. The teacher samples with DDIM (``eta = 0``) on a grid of ``2N`` steps (``times``, ``(2N + 1,)``
float64 from 1 to 0); the student, warm-started from the teacher's weights, is trained for the grid of ``N`` steps
made of every other point (:func:`halve_grid`). For a student interval ``t -> t''`` with the teacher's point ``t'``
between them, and ``x_t`` drawn from the forward process:

- the teacher takes two DDIM steps ``x_t -> x_t' -> x_t''`` (:func:`two_step_target`);
- the student's target is the data estimate for which *one* DDIM step from ``x_t`` lands on ``x_t''``
  (Salimans & Ho, Algorithm 2): ``x0~ = (x_t'' - (sigma_t'' / sigma_t) x_t) / (alpha_t'' - (sigma_t'' / sigma_t)
  alpha_t)``; at the last interval (``t'' = 0``) it is ``x_t''`` itself;
- the loss is the squared error of the student's data estimate, weighted by the truncated SNR ``max(SNR(t), 1)``
  (their x0-loss weighting), over the entries the student's own loss would average (its mask, without known
  entries).

Categorical entries (bond orders, ``categorical.py``) have no deterministic step to match: there the student
learns the teacher's class probabilities ``p(x_0 | x_t)`` (cross-entropy with the teacher's probabilities as soft
labels, weighted as the student's own categorical loss), the teacher's classes at ``t'`` are drawn from its
``p(x_t' | x_t)``, and a sampler steps them ancestrally. A distilled student records its grid
(``DiffusionModule.sampling_times``) and is sampled with ``ddim`` on that grid only (:func:`distilled_times`; a
consistency student, ``consistency.py``, with the ``consistency`` sampler on its own grid).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .errors import UserError
from .losses import DenoisingLoss
from .parameterisation import masked_mean_error
from .samplers import DISTILLED_SAMPLERS, SAMPLERS, ddim, sampler_times, step_coefficients
from .schedules import NoiseSchedule
from .state_spaces import StateSpace

if TYPE_CHECKING:  # annotations only: module.py imports this file
    from .denoiser import Denoiser
    from .module import DiffusionBatch, DiffusionModule

DISTILLED_SAMPLER = "ddim"  # the update rule a student is distilled for (eta = 0 on Gaussian entries)


def halve_grid(times: Tensor) -> Tensor:
    """The student's grid ``(N + 1,)``: every other point of the teacher's ``(2N + 1,)`` grid.

    Raises:
        ValueError: the teacher's grid has an odd number of steps.
    """
    steps = len(times) - 1
    if steps < 2 or steps % 2:
        raise ValueError(f"A teacher grid of {steps} steps cannot be halved: progressive distillation needs an "
                         "even number of teacher steps (64, 32, ..., 2).")
    return times[::2].clone()


def keep_clean(denoiser: Denoiser, clean: tuple[Tensor, Tensor] | None) -> Denoiser:
    """``denoiser`` seeing the entries ``clean = (known, x0)`` holds clean (``x0``'s) in every state it is given, as
    in training (a conformer model's atom types); ``denoiser`` itself when ``clean`` is None."""
    if clean is None:
        return denoiser
    known, x0 = clean[0].bool(), clean[1]

    def denoise(x: Tensor, s: Tensor, c: Any = None) -> Tensor:
        return denoiser(torch.where(known.expand_as(x), x0, x), s, c)

    return denoise


def two_step_target(teacher: Denoiser, x_t: Tensor, times: tuple[Tensor, Tensor, Tensor], schedule: NoiseSchedule,
                    space: StateSpace, cond: Any = None, generator: torch.Generator | None = None,
                    clean: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """The student's data-estimate target for one step ``t -> t''`` from two teacher DDIM steps through ``t'``
    (the core's :func:`~sci_diffusion.samplers.ddim` on the grid ``(t, t', t'')``).

    Args:
        teacher: the teacher's denoiser ``D(x, t, cond) -> x0_hat`` (class probabilities on categorical rows).
        x_t: the state at ``t``, as the space lays it out.
        times: 0-d float64 ``(t, t', t'')`` with ``t > t' > t'' >= 0``.
        schedule: the schedule both networks were trained with.
        space: the batch's state space (the teacher's steps are projected into it).
        cond: the condition both see.
        generator: for the draw of the categorical rows at ``t'``.
        clean: ``(known, x0)``: entries the network sees clean at every time (a conformer model's atom types),
            put back in every state the teacher sees.

    Returns:
        ``x_t``'s shape: the target data estimate on Gaussian entries, the teacher's class probabilities at ``t``
        on categorical rows.
    """
    t, t_mid, t_next = times
    first: list[Tensor] = []  # the teacher's estimate at t (callback of step 0)
    x_next = ddim(keep_clean(teacher, clean), x_t, schedule, torch.stack([t, t_mid, t_next]), space, cond=cond,
                  generator=generator, callback=lambda i, s, x, x0: first.append(x0) if i == 0 else None)
    a_t, s_t, _ = step_coefficients(schedule, t)
    a_n, s_n, _ = step_coefficients(schedule, t_next)
    ratio = s_n / s_t
    target = (x_next - ratio * x_t) / (a_n - ratio * a_t)
    # categorical rows: the teacher's class probabilities (padding, also masked, is left out of both losses)
    return torch.where(space.categorical_mask(x_t).bool(), first[0], target)


@dataclass
class ProgressiveDistillationLoss:
    """One round of progressive distillation as a training loss ``loss_fn(model, batch, generator)`` (module
    docstring): the student ``model`` learns one DDIM step of its grid from two of the teacher's.

    Each call trains one student interval, drawn uniformly, for the whole batch (the denoisers take one time per
    call, as the samplers call them).

    Args:
        base: the student's own diffusion loss, whose forward process (categorical rows included) and condition
            dropout draw ``x_t`` and the condition that both networks see.
        times: the teacher's grid ``(2N + 1,)`` float64 from 1 to 0.
        teacher: ``teacher(context) -> Denoiser``: the teacher's denoiser for a batch's context (a module's
            ``denoiser`` method, or an exact one).
        categorical_weight: the weight of the categorical rows' cross-entropy (the student's own).
    """

    base: DenoisingLoss
    times: Tensor
    teacher: Callable[[Any], Denoiser]
    categorical_weight: float = 1.0

    def __post_init__(self) -> None:
        self.student_times = halve_grid(self.times)

    def __call__(self, model: DiffusionModule, batch: DiffusionBatch, generator: torch.Generator | None = None) -> Tensor:
        space, x0 = batch.space, batch.x0
        k = int(torch.randint(0, len(self.student_times) - 1, (), generator=generator))
        t, t_mid, t_next = self.times[2 * k], self.times[2 * k + 1], self.times[2 * k + 2]
        noised = self.base.noise_at(batch, t.expand(batch.num_samples).to(x0.device), generator)
        cond = self.base.condition(model, batch, generator)
        clean = None if batch.known is None else (batch.known, x0)
        with torch.no_grad():
            target = two_step_target(self.teacher(batch.context), noised.x_t, (t, t_mid, t_next), model.schedule,
                                     space, cond, generator, clean)
        estimate = model.denoiser(batch.context)(noised.x_t, t.to(torch.float32), cond)
        gaussian = 1 - space.categorical_mask(x0)
        mask = gaussian if noised.mask is None else noised.mask * gaussian
        weight = max(float(torch.exp(2 * model.schedule.log_snr(t))), 1.0)  # the truncated SNR
        loss = masked_mean_error(estimate, target.to(estimate.dtype), weight=torch.tensor(weight), mask=mask)
        if space.categorical:
            total, rows = space.categorical_loss(estimate.float().clamp(min=1e-12).log(), target.float())
            loss = loss + self.categorical_weight * total / rows.clamp(min=1)
        return loss


def distilled_times(module: Any, sampler: str, steps: int, spacing: str | None = None) -> Tensor:
    """The time grid a run of ``sampler`` at ``steps`` uses with ``module``: a distilled student's own grid
    (``module.sampling_times``; its sampler is ``module.distilled_sampler``, ``ddim`` for a progressive student,
    ``consistency`` for a consistency student), or the sampler's grid (``samplers.sampler_times``) for any other
    model.

    Raises:
        UserError: a distilled student asked for another step count or sampler than it was distilled for, or a
            sampler for distilled students only (``samplers.DISTILLED_SAMPLERS``) asked of a model not distilled
            for it (one sentence, naming what it takes; the CLI prints it).
    """
    times = getattr(module, "sampling_times", None)
    if times is None:
        if sampler in DISTILLED_SAMPLERS:
            raise UserError(f"The {sampler} sampler samples a {sampler}-distilled student only; choose one of "
                            f"{', '.join(SAMPLERS)} for this model.")
        return sampler_times(sampler, module.schedule, steps, spacing)
    distilled, kind = len(times) - 1, getattr(module, "distilled_sampler", None) or DISTILLED_SAMPLER
    if steps != distilled:
        raise UserError(f"This model was distilled for {distilled} steps; sample it with --steps {distilled}, "
                         f"not {steps}.")
    if sampler != kind:
        raise UserError(f"This model was distilled for the {kind} sampler; sample it with --sampler {kind}, "
                        f"not {sampler}.")
    return times.clone()
