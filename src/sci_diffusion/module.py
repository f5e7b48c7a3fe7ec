"""The generic Lightning training plumbing: :class:`DiffusionModule`.

A domain subclasses it and supplies three things:

- ``build_network()`` (called once in ``__init__``), the network ``net(x_t, t, cond, context)``;
- ``prepare_batch(batch) -> DiffusionBatch``: the clean data ``x0``, its state space, the
  condition and whatever the network needs to see besides ``x_t`` (``context``: a graph's batch
  vector, an image's MR slices, ...);
- optionally ``validation_metrics()``: periodic sampling at validation (with the EMA weights),
  returning scalars to log.

Everything else is shared: the training loss (``build_loss``: by default the core's
:class:`~sci_diffusion.losses.DenoisingLoss`, with the time draw, the forward process, condition dropout
for classifier-free guidance and the SNR weighting in it), EMA (Lightning's
``WeightAveraging`` with a warm-up decay), the loss-curve PNG, a warm start from a trained checkpoint
(``init_from``), and checkpoints that record the config, the domain and the package version.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor

from .callbacks import AdaptiveGradientClipping, CheckpointAtTrainEnd, LossCurvePlot, ema_with_warmup
from .checkpoints import file_sha256, load_module, module_class_name, read_checkpoint, training_record
from .consistency import CONSISTENCY_SAMPLER, ConsistencyDistillationLoss, sampling_grid
from .denoiser import PredictionDenoiser
from .distillation import DISTILLED_SAMPLER, ProgressiveDistillationLoss, halve_grid
from .errors import UserError
from .losses import DenoisingLoss
from .paths import noise_path
from .state_spaces import StateSpace
from .time_grids import time_grid

DISTILL_METHODS = ("progressive", "consistency")
CONSISTENCY_STEPS, CONSISTENCY_INTERVALS = 4, 32  # a consistency student's default step count and training grid


@dataclass
class DiffusionBatch:
    """What the core needs from a domain's batch.

    Attributes:
        x0: clean data; images ``(B, C, H, W)``, graphs ``(N, 3 + F)``.
        space: the batch's state space (it knows the samples' grouping).
        cond: the condition (None if unconditional), dropped per sample for CFG training.
        context: passed to the network untouched (e.g. a PyG batch vector).
        mask: optional 0/1 mask broadcastable to ``x0``; the loss averages inside it.
        known: optional 0/1 mask broadcastable to ``x0`` of entries given as the condition: the
            network sees them clean (x_t takes x0 there) and the loss leaves them out (e.g. the atom
            types of a conformer model, which generates positions for given atoms).
    """

    x0: Tensor
    space: StateSpace
    cond: Any = None
    context: Any = None
    mask: Tensor | None = None
    known: Tensor | None = None

    @property
    def num_samples(self) -> int:
        return self.space.num_samples or self.x0.shape[0]


class DiffusionModule(L.LightningModule):
    """Generic diffusion training (LightningModule). See the module docstring for the contract.

    Args:
        schedule: noise schedule name (``linear``, ``cosine``, ``polynomial_2``, ``sigmoid``), or ``rectified_flow``,
            the linear path of flow matching (``paths.py``; x0-prediction).
        timesteps: the training T; time is drawn from ``{1..T} / T``.
        prediction: the network's parameterisation, ``eps``, ``x0`` or ``v``.
        loss_type: ``l2`` or ``l1``.
        loss_weighting: ``none``, ``min_snr``, ``clipped_snr`` or ``snr``, applied for the network's prediction type
            (see ``parameterisation.loss_weight``).
        loss_weight_gamma: the weighting's gamma (Min-SNR's gamma, the clipped SNR's ceiling); None: its default.
        loss_max_time: train on times in ``(0, loss_max_time]`` only (``losses.DenoisingLoss.max_time``): a
            low-noise expert; 1 (default) trains every time.
        lr, weight_decay, amsgrad: AdamW settings (EDM trains with ``amsgrad``).
        adaptive_gradient_clipping: clip each step's gradient norm at 1.5 x mean + 2 x std of the last 50 norms, as
            EDM does (``callbacks.AdaptiveGradientClipping``); leave the trainer's ``gradient_clip_val`` unset then.
        ema_decay: the EMA's final decay (it ramps up from 0, see ``callbacks.ema_with_warmup``);
            0 disables EMA.
        cond_dropout: probability of dropping the condition per sample (classifier-free guidance).
        cond_group_dropout: probability of dropping each of the condition's groups (``condition_groups``: the
            properties of a multi-property condition) on its own, besides ``cond_dropout``.
        val_sampler, val_steps: sampler used by ``validation_metrics``.
        sample_every_n_epochs: run ``validation_metrics`` every n validation epochs (0: never).
        lr_warmup_steps: linear learning-rate warm-up.
        init_from: a trained checkpoint of this domain whose weights start training (a warm start,
            :meth:`start_from_checkpoint`); None: random initialisation.
        distill_from: a trained checkpoint of this domain (the teacher) to distil: training is one round of
            progressive distillation (``distillation.py``) or consistency distillation (``consistency.py``, see
            ``distill_method``), the student starting from the teacher's weights unless ``init_from`` says
            otherwise. None: ordinary training.
        distill_steps: the student's step count. Progressive: half the teacher's (default: half a distilled
            teacher's, else 32). Consistency: the steps of the ``consistency`` sampler, a divisor of
            ``distill_intervals`` (default 4).
        distill_spacing: the time spacing of the grid of a teacher that was not distilled itself (its ``2 x
            distill_steps`` DDIM steps, or ``distill_intervals``); a distilled teacher's grid is its own.
        teacher_times, teacher_sha256: filled in from ``distill_from`` on the first construction and kept in the
            checkpoint, so that a student loads without its teacher: the teacher's grid and file hash.
        distill_method: ``progressive`` (Salimans & Ho) or ``consistency`` (Song et al. 2023, consistency
            distillation: the student learns the teacher's probability-flow trajectories' origin on a grid of
            ``distill_intervals`` teacher DDIM steps and samples with the ``consistency`` sampler).
        distill_intervals: consistency only: the intervals ``N`` of the teacher's grid the student is trained on
            (default 32; a progressive student as the teacher: its own grid).
        distill_target_decay: consistency only: the target network's EMA decay ``mu`` (0: a stop-gradient copy of
            the student; ``ConsistencyDistillationLoss``).
    """

    domain = "core"
    loss_class: type[DenoisingLoss] = DenoisingLoss  # what build_loss makes of the hyperparameters

    def __init__(
        self,
        schedule: str = "polynomial_2",
        timesteps: int = 1000,
        prediction: str = "eps",
        loss_type: str = "l2",
        loss_weighting: str = "none",
        lr: float = 1e-4,
        weight_decay: float = 1e-12,
        ema_decay: float = 0.999,
        cond_dropout: float = 0.0,
        val_sampler: str = "dpmpp2m",
        val_steps: int = 20,
        sample_every_n_epochs: int = 1,
        lr_warmup_steps: int = 0,
        init_from: str | None = None,
        amsgrad: bool = False,
        adaptive_gradient_clipping: bool = False,
        loss_weight_gamma: float | None = None,
        cond_group_dropout: float = 0.0,
        distill_from: str | None = None,
        distill_steps: int | None = None,
        distill_spacing: str = "uniform",
        teacher_times: list[float] | None = None,
        teacher_sha256: str | None = None,
        distill_method: str = "progressive",
        distill_intervals: int | None = None,
        distill_target_decay: float = 0.95,
        loss_max_time: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.schedule = noise_path(schedule, timesteps)
        self.net = self.build_network()
        self.loss_fn = self.build_loss()
        self._initialised_from: str | None = None
        if distill_from:
            self.loss_fn = self.distillation_loss(self.loss_fn)

    # ----- distillation (progressive or consistency) -------------------------------------------
    def distillation_loss(self, base: Callable[..., Tensor]) -> ProgressiveDistillationLoss | ConsistencyDistillationLoss:
        """The loss of a distillation round (``distill_from``, ``distill_method``): ``base``, this model's own loss,
        draws the forward process; the teacher's grid is read from its checkpoint once and kept in the
        hyperparameters."""
        h = self.hparams
        method = h.get("distill_method") or "progressive"
        if method not in DISTILL_METHODS:
            raise UserError(f"distill_method is one of {', '.join(DISTILL_METHODS)}, not {method!r}.")
        if h.get("teacher_times") is None:
            teacher = read_checkpoint(h.distill_from)
            if teacher["sci_diffusion"]["domain"] != self.domain:
                raise UserError(f"distill_from {h.distill_from} holds a model of the "
                                f"{teacher['sci_diffusion']['domain']!r} domain, not {self.domain!r}.")
            config = teacher["sci_diffusion"]["config"]
            if (config.get("teacher_times") is not None
                    and (config.get("distill_method") or "progressive") == "consistency"):
                raise UserError(f"distill_from {h.distill_from} is a consistency-distilled student, which has no "
                                "DDIM steps to distil; distil its teacher instead.")
            times, h.distill_steps = (self._consistency_grid if method == "consistency"
                                      else self._progressive_grid)(config.get("teacher_times"))
            h.teacher_times, h.teacher_sha256 = times.tolist(), file_sha256(h.distill_from)
            if not h.init_from:
                h.init_from = h.distill_from  # the student starts as its teacher
        # kept apart too: a subclass's save_hyperparameters() after this __init__ merges its own arguments over
        # these, and LightningCLI passes every argument (teacher_times=None, init_from=None); setup() restores them
        self._distillation = {k: h.get(k) for k in ("teacher_times", "teacher_sha256", "distill_steps", "init_from",
                                                    "distill_method", "distill_intervals")}
        self._distillation.update(val_sampler=self.distilled_sampler, val_steps=h.distill_steps)  # as it samples
        times = torch.tensor(h.teacher_times, dtype=torch.float64)
        weight = getattr(base, "categorical_weight", 1.0)
        if method == "consistency":
            return ConsistencyDistillationLoss(base, times, self.teacher_denoiser, weight,
                                               h.get("distill_target_decay", 0.95))
        return ProgressiveDistillationLoss(base, times, self.teacher_denoiser, weight)

    def _progressive_grid(self, own: list[float] | None) -> tuple[Tensor, int]:
        """The teacher's ``2N``-step grid and the student's ``N`` for progressive distillation; ``own``: a distilled
        teacher's own training grid, or None."""
        h = self.hparams
        if own is not None:  # a distilled teacher samples on its own grid
            times = halve_grid(torch.tensor(own, dtype=torch.float64))
            if h.distill_steps not in (None, (len(times) - 1) // 2):
                raise UserError(f"The teacher takes {len(times) - 1} steps, so its student takes "
                                f"{(len(times) - 1) // 2}, not {h.distill_steps}.")
        else:
            times = time_grid(self.schedule, 2 * (h.distill_steps or 32), h.distill_spacing)
        return times, (len(times) - 1) // 2

    def _consistency_grid(self, own: list[float] | None) -> tuple[Tensor, int]:
        """The teacher's grid of ``N = distill_intervals`` DDIM steps (a progressive student's own grid) and the
        consistency student's step count, which divides ``N``."""
        h = self.hparams
        if own is not None:  # a progressive student samples on its own grid only
            times = halve_grid(torch.tensor(own, dtype=torch.float64))
            if h.get("distill_intervals") not in (None, len(times) - 1):
                raise UserError(f"The teacher takes {len(times) - 1} steps, so its consistency student is trained "
                                f"on {len(times) - 1} intervals, not {h.distill_intervals}.")
        else:
            times = time_grid(self.schedule, h.get("distill_intervals") or CONSISTENCY_INTERVALS, h.distill_spacing)
        h.distill_intervals, steps = len(times) - 1, h.distill_steps or CONSISTENCY_STEPS
        try:
            sampling_grid(times, steps)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        return times, steps

    @property
    def distilled_sampler(self) -> str | None:
        """The sampler a distilled student takes (``ddim`` after progressive distillation, ``consistency`` after
        consistency distillation); None for a model that was not distilled."""
        if self.hparams.get("teacher_times") is None:
            return None
        return CONSISTENCY_SAMPLER if self.hparams.get("distill_method") == "consistency" else DISTILLED_SAMPLER

    @property
    def sampling_times(self) -> Tensor | None:
        """A distilled student's grid ``(distill_steps + 1,)`` float64 (every other point of a progressive
        student's teacher's; every ``N / distill_steps``-th point of a consistency student's training grid); None
        for a model that was not distilled (``distillation.distilled_times`` picks the grid to sample on)."""
        times = self.hparams.get("teacher_times")
        if times is None:
            return None
        times = torch.tensor(times, dtype=torch.float64)
        if self.distilled_sampler == CONSISTENCY_SAMPLER:
            return sampling_grid(times, self.hparams.get("distill_steps") or CONSISTENCY_STEPS)
        return halve_grid(times)

    def teacher_denoiser(self, context: Any = None) -> Any:
        """The teacher's denoiser for a batch's ``context``; the teacher (``distill_from``, EMA weights, frozen) is
        loaded on the first call, beside the student but not part of it (no weights of it in the student's
        checkpoint or optimiser)."""
        teacher = self.__dict__.get("_teacher")
        if teacher is None:
            teacher = load_module(self.hparams.distill_from, self.domain).requires_grad_(False)
            self.__dict__["_teacher"] = teacher
        return teacher.to(self.device).denoiser(context)

    # ----- what a domain supplies -------------------------------------------------------------
    def build_network(self) -> torch.nn.Module:
        raise NotImplementedError("A DiffusionModule subclass must build its network.")

    def prepare_batch(self, batch: Any) -> DiffusionBatch:
        raise NotImplementedError("A DiffusionModule subclass must turn its batches into a DiffusionBatch.")

    def build_loss(self) -> Callable[[DiffusionModule, DiffusionBatch, torch.Generator | None], Tensor]:
        """The training loss ``loss_fn(model, batch, generator) -> scalar`` (called once in ``__init__``): the
        diffusion loss of the hyperparameters, a ``loss_class`` (``losses.DenoisingLoss``, or a subclass with
        terms of its own such as the residual model's scale term). A domain overrides it for another kind of
        loss (the MRI-to-CT regression's L1)."""
        h = self.hparams
        return self.loss_class(self.schedule, h.prediction, h.loss_type, h.loss_weighting, h.cond_dropout,
                               weighting_gamma=h.get("loss_weight_gamma"), group_dropout=h.get("cond_group_dropout", 0.0),
                               max_time=h.get("loss_max_time", 1.0))

    @property
    def condition_groups(self) -> int:
        """How many parts of the condition the loss may drop one by one (``cond_group_dropout``); 1: the
        condition is dropped whole. A module with more overrides :meth:`drop_condition` to drop them."""
        return 1

    def drop_condition(self, cond: Any, drop: Tensor, batch: DiffusionBatch) -> Any:
        """Replace the condition of samples where ``drop`` is True by the null condition.

        Args:
            cond: the batch's condition.
            drop: ``(num_samples, condition_groups)`` bool, which groups of which sample to drop.

        The default handles a ``(num_samples, ...)`` tensor condition in one group, the null condition being
        zeros (the network sees ``cond=None`` as zeros too).
        """
        if drop.shape[1] != 1:
            raise NotImplementedError(f"{type(self).__name__} has {drop.shape[1]} condition groups: it must "
                                      "override drop_condition to drop them one by one.")
        return cond * (~drop[:, 0]).to(cond.dtype).reshape(-1, *([1] * (cond.dim() - 1)))

    def validation_metrics(self) -> dict[str, float]:
        """Sample and score; called every ``sample_every_n_epochs`` validation epochs."""
        return {}

    # ----- the network as the sampler sees it ------------------------------------------------
    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None, context: Any = None) -> Tensor:
        return self.net(x_t, t, cond, context)

    def denoiser(self, context: Any = None, clip: tuple[float, float] | None = None) -> PredictionDenoiser:
        """An x0-denoiser ``D(x_t, t, cond)`` over this module's network, with ``context`` bound."""
        return PredictionDenoiser(lambda x, t, c: self(x, t, c, context), self.schedule, self.hparams.prediction, clip)

    # ----- training --------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        b = self.prepare_batch(batch)
        loss = self.loss_fn(self, b)
        self.log("train/loss", loss, prog_bar=True, batch_size=b.num_samples)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        b = self.prepare_batch(batch)
        # A fixed generator per batch keeps the validation loss comparable across epochs.
        loss = self.loss_fn(self, b, torch.Generator().manual_seed(batch_idx))
        self.log("val/loss", loss, prog_bar=True, batch_size=b.num_samples, sync_dist=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        # At epoch *start*: Lightning's WeightAveraging swaps the EMA weights in before this hook and
        # swaps them out again before the module's on_validation_epoch_end, so sampling there would
        # score the raw training weights instead of the model that ships.
        every = self.hparams.sample_every_n_epochs
        if every and not self.trainer.sanity_checking and (self.current_epoch + 1) % every == 0:
            for name, value in self.validation_metrics().items():
                self.log(f"val/{name}", value, sync_dist=True)  # the mean over processes

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
                                amsgrad=self.hparams.get("amsgrad", False))
        warmup = self.hparams.lr_warmup_steps
        if not warmup:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_callbacks(self):
        callbacks = [CheckpointAtTrainEnd(), LossCurvePlot()]  # before WeightAveraging: see its docstring
        if self.hparams.get("adaptive_gradient_clipping", False):
            callbacks.append(AdaptiveGradientClipping())
        if self.hparams.ema_decay > 0:
            callbacks.append(WeightAveraging(multi_avg_fn=ema_with_warmup(self.hparams.ema_decay)))
        return callbacks

    # ----- a warm start ----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.hparams.update(getattr(self, "_distillation", None) or {})  # see distillation_loss
        if stage == "fit":
            self.start_from_checkpoint()

    def start_from_checkpoint(self) -> None:
        """A warm start: with ``init_from``, copy that checkpoint's weights into this model once, before
        training (``setup("fit")`` calls it, so the EMA starts from them too).

        A slim export gives its EMA weights, and a Lightning ``last.ckpt`` its raw training weights. The
        optimiser, the EMA and the step count start afresh; for an exact continuation, ``fit
        --ckpt_path`` a ``last.ckpt`` instead. Resuming a run restores its own weights over these.

        Raises:
            UserError: the checkpoint is of another domain, or :meth:`copy_initial_weights` refuses it
                (the CLI: one sentence, exit 2).
        """
        path = self.hparams.get("init_from")
        if not path or self._initialised_from == path:
            return
        checkpoint = read_checkpoint(path)
        held = checkpoint["sci_diffusion"]["domain"]
        if held != self.domain:
            raise UserError(f"init_from {path} holds a model of the {held!r} domain, not {self.domain!r}.")
        self.copy_initial_weights(checkpoint, path)
        self._initialised_from = path

    def copy_initial_weights(self, checkpoint: dict[str, Any], path: str) -> None:
        """The warm start's policy: by default the checkpoint must hold this same class with the same
        sizes, and every weight is copied. A domain overrides it to allow more (molecules: a wider
        input layer, so a conditional model can start from an unconditional one).

        Raises:
            UserError: another class, or other sizes.
        """
        held = checkpoint["sci_diffusion"]["module_class"]
        if module_class_name(checkpoint["sci_diffusion"]) != type(self).__qualname__:
            raise UserError(f"init_from {path} holds a {held}, not a {type(self).__qualname__} to start from.")
        mine, theirs = self.state_dict(), checkpoint["state_dict"]
        differ = sorted(k for k in mine.keys() | theirs.keys() if k not in mine or k not in theirs
                        or mine[k].shape != theirs[k].shape)
        if differ:
            raise UserError(f"init_from {path} has other network sizes than this model (first difference: "
                            f"{differ[0]}); give the model the sizes it was trained with.")
        self.load_state_dict(theirs)

    # ----- checkpoints -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sci_diffusion"] = training_record(self, self.domain)
        target = getattr(self.loss_fn, "target", None)
        if target is not None:  # a consistency round's target network theta^-: a resumed round goes on with it
            checkpoint["consistency_target"] = {name: w.detach().cpu() for name, w in target.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "consistency_target" in checkpoint and isinstance(self.loss_fn, ConsistencyDistillationLoss):
            self.loss_fn.target = dict(checkpoint["consistency_target"])
