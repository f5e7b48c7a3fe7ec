"""Lightning callbacks of the core."""
from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from .atomic import atomic_path


class LossCurvePlot(L.Callback):
    """At the end of ``fit``, draw the logged train/val losses to ``<log_dir>/loss_curve.png``.

    It reads the ``metrics.csv`` of Lightning's ``CSVLogger``; without one it does nothing.
    """

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0 or trainer.logger is None or trainer.logger.log_dir is None:
            return
        metrics = Path(trainer.logger.log_dir) / "metrics.csv"
        if metrics.exists():
            plot_loss_curve(metrics, Path(trainer.logger.log_dir) / "loss_curve.png")


class CheckpointAtTrainEnd(L.Callback):
    """Save ``last.ckpt`` in the ``ModelCheckpoint`` folder when training ends, however it ends.

    Lightning's ``ModelCheckpoint`` saves only at validation or every N steps, so a run stopped by
    ``max_time`` or ``max_steps`` between two saves loses the steps since the last one. This runs
    before ``WeightAveraging.on_train_end`` (it comes first in ``configure_callbacks``), so the
    checkpoint keeps the raw weights for resuming and the EMA average for sampling, as every other.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checkpoint_callback = trainer.checkpoint_callback
        folder = getattr(checkpoint_callback, "dirpath", None)
        if folder is not None and trainer.global_step > 0:
            path = str(Path(folder) / "last.ckpt")
            trainer.save_checkpoint(path)
            if hasattr(checkpoint_callback, "_last_checkpoint_saved"):
                # ModelCheckpoint(save_last=True) saves a "last" at train end too when it saved nothing this
                # run; it runs after WeightAveraging has swapped the average in, and the name is taken, so it
                # would write last-v1.ckpt with the EMA weights as the weights to resume from. Tell it this
                # checkpoint is the last one.
                checkpoint_callback.last_model_path = path
                checkpoint_callback._last_checkpoint_saved = path


class CpuTimeBudget(L.Callback):
    """Stop training once the process has spent ``hours`` of CPU time in it (user + system, all threads).

    Lightning's ``max_time`` counts wall-clock time, which stretches when other work shares the
    cores; CPU time does not, so a budget given in CPU time means the same training wherever and
    beside whatever it runs. Two threads for one hour spend two CPU-hours. The time spent is kept
    in the checkpoint, so a resumed run counts what the earlier legs spent, and logged as
    ``train/cpu_hours``.

    With ``save_at``, it also saves a checkpoint ``cpu_<h>h.ckpt`` (``cpu_0.25h.ckpt``, ...) in the
    ``ModelCheckpoint`` folder the first time the CPU time spent passes each mark, so that a study
    can compare recipes at equal CPU time. Marks already passed by earlier legs are not saved again.

    A warm start (``init_from`` a slim export, whose optimiser state and CPU clock are gone) gives the hours
    already behind its weights as ``spent_hours``: a fresh run counts them as spent, so the budget, the marks and a
    :class:`CpuTimeCooldown` go on from there (a run resumed from its own checkpoint counts what that holds).

    Args:
        hours: the budget in CPU-hours (core-hours).
        save_at: CPU-hour marks at which to save a checkpoint (each at most ``hours``).
        spent_hours: CPU-hours spent on the starting weights before this run (0: a run from scratch).
    """

    def __init__(self, hours: float, save_at: list[float] | None = None, spent_hours: float = 0.0) -> None:
        if hours <= 0:
            raise ValueError(f"The CPU-time budget must be positive, not {hours} hours.")
        if not 0 <= spent_hours < hours:
            raise ValueError(f"The CPU-hours already spent must lie in [0, {hours}), not {spent_hours}.")
        marks = sorted(float(m) for m in (save_at or []))
        if any(m <= 0 or m > hours for m in marks):
            raise ValueError(f"Each checkpoint mark must lie in (0, {hours}] CPU-hours, not {marks}.")
        self.hours = hours
        self.save_at = [m for m in marks if m > spent_hours]
        self._spent_before = 3600.0 * spent_hours  # CPU seconds of earlier legs (a checkpoint's replace these)
        self._start: float | None = None

    def spent_seconds(self) -> float:
        """CPU seconds spent in training so far, earlier legs included."""
        return self._spent_before + (0.0 if self._start is None else time.process_time() - self._start)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.process_time()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        spent = self.spent_seconds()
        if trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            pl_module.log("train/cpu_hours", spent / 3600.0)
        while self.save_at and spent >= 3600.0 * self.save_at[0]:
            self._save_mark(trainer, self.save_at.pop(0))
        if spent >= 3600.0 * self.hours:
            trainer.should_stop = True

    def _save_mark(self, trainer: L.Trainer, mark: float) -> None:
        folder = getattr(trainer.checkpoint_callback, "dirpath", None) or trainer.default_root_dir
        trainer.save_checkpoint(str(Path(folder) / f"cpu_{mark:g}h.ckpt"))

    def state_dict(self) -> dict[str, float]:
        return {"cpu_seconds": self.spent_seconds(), "hours": self.hours}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self._spent_before = float(state_dict.get("cpu_seconds", 0.0))
        self.save_at = [m for m in self.save_at if 3600.0 * m > self._spent_before]


class CpuTimeCooldown(L.Callback):
    """A learning-rate cooldown counted in CPU time: the schedule's learning rate times a factor that falls
    linearly from 1 at ``start_hours`` to ``final_fraction`` at ``end_hours`` of training CPU time (earlier legs
    included, as :class:`CpuTimeBudget` counts it; the trainer needs one).

    This is the "decay" of a warmup-stable-decay schedule (Hägele et al. 2024, "Scaling laws and compute-optimal
    training beyond fixed training durations"): a run trains at a constant rate for as long as it is given, and
    any of its checkpoints can be cooled down into a finished model by a short branch, so training can go on
    across sessions without fixing its length in advance. Before ``start_hours`` it changes nothing.

    The rate it scales is the LR scheduler's (the warm-up's), or without a scheduler the optimiser's rate when
    this callback first ran, kept in the checkpoint so a resumed leg scales the same base.

    Args:
        start_hours: CPU-hours of training at which the cooldown starts.
        end_hours: CPU-hours at which the factor reaches ``final_fraction`` (it stays there after).
        final_fraction: the factor at the end (0: the rate falls to zero).
    """

    def __init__(self, start_hours: float, end_hours: float, final_fraction: float = 0.0) -> None:
        if not 0 <= start_hours < end_hours:
            raise ValueError(f"The cooldown must start before it ends, at or after 0 CPU-hours, not {start_hours} "
                             f"to {end_hours}.")
        if not 0 <= final_fraction <= 1:
            raise ValueError(f"The cooldown's final fraction must lie in [0, 1], not {final_fraction}.")
        self.start_hours, self.end_hours, self.final_fraction = start_hours, end_hours, final_fraction
        self.base_lrs: list[float] | None = None  # without an LR scheduler: the rates it scales
        self._budget: CpuTimeBudget | None = None

    def factor(self, hours: float) -> float:
        """The factor on the learning rate after ``hours`` CPU-hours of training."""
        done = min(max((hours - self.start_hours) / (self.end_hours - self.start_hours), 0.0), 1.0)
        return 1.0 - (1.0 - self.final_fraction) * done

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._budget = next((c for c in trainer.callbacks if isinstance(c, CpuTimeBudget)), None)
        if self._budget is None:
            raise ValueError("CpuTimeCooldown counts CPU time with the trainer's CpuTimeBudget; add one.")
        if self.base_lrs is None:
            self.base_lrs = [group["lr"] for group in trainer.optimizers[0].param_groups]

    def scheduled_lrs(self, trainer: L.Trainer) -> list[float]:
        """The rates before the cooldown: the LR scheduler's last ones, or :attr:`base_lrs`."""
        if trainer.lr_scheduler_configs:
            return list(trainer.lr_scheduler_configs[0].scheduler.get_last_lr())
        return list(self.base_lrs)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        hours = self._budget.spent_seconds() / 3600.0
        factor = self.factor(hours)
        for group, lr in zip(trainer.optimizers[0].param_groups, self.scheduled_lrs(trainer)):
            group["lr"] = lr * factor
        if trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            pl_module.log("train/lr_factor", factor)

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": self.base_lrs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_lrs = state_dict.get("base_lrs")


class AdaptiveGradientClipping(L.Callback):
    """EDM's gradient clipping (Hoogeboom et al. 2022, ``utils.gradient_clipping``): before each optimiser step, clip
    the gradient's global L2 norm at ``1.5 x mean + 2 x std`` of the last ``window`` norms, and remember the norm
    (or the limit, when it was clipped). The history starts as ``[first]`` (EDM: 3000, a large value soon flushed),
    so early steps are not clipped and later ones only when a norm is far outside what training has been seeing.

    Kept in the checkpoint, so a resumed run clips as the uninterrupted one would.

    Args:
        window: how many recent norms the limit is computed from (EDM: 50).
        first: the history's first entry (EDM: 3000).
    """

    def __init__(self, window: int = 50, first: float = 3000.0) -> None:
        self.window = window
        self.norms: list[float] = [float(first)]  # newest first, as EDM's Queue
        self.clipped = 0

    def limit(self) -> float:
        """The largest gradient norm the next step may take: ``1.5 mean + 2 std`` (population std) of the history."""
        history = torch.tensor(self.norms, dtype=torch.float64)
        return float(1.5 * history.mean() + 2.0 * history.std(unbiased=False))

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        limit = self.limit()
        norm = float(torch.nn.utils.clip_grad_norm_(pl_module.parameters(), max_norm=limit, norm_type=2.0))
        self.clipped += norm > limit
        self.norms.insert(0, min(norm, limit))
        del self.norms[self.window:]

    def state_dict(self) -> dict[str, Any]:
        return {"norms": list(self.norms), "clipped": self.clipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.norms, self.clipped = list(state_dict["norms"]), int(state_dict.get("clipped", 0))


def plot_loss_curve(metrics_csv: Path, out_png: Path) -> None:
    """Plot every ``*loss*`` column of a CSVLogger file against the step."""
    import matplotlib  # only when a picture is drawn: matplotlib takes about a second to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv) as fh:
        rows = list(csv.DictReader(fh))
    columns = [c for c in (rows[0].keys() if rows else []) if "loss" in c and not c.endswith("_epoch")]
    fig, ax = plt.subplots(figsize=(6, 4))
    for col in columns:
        pts = [(int(r["step"]), float(r[col])) for r in rows if r.get(col) not in (None, "")]
        if pts:
            ax.plot(*zip(*pts), label=col, marker="." if len(pts) < 50 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("training curve")
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def ema_with_warmup(decay: float):
    """An ``AveragedModel`` ``multi_avg_fn``: EMA whose decay ramps up as ``min(decay, (1 + n) / (10 + n))``.

    ``n`` is the number of updates so far. A fixed decay from the first step (Lightning's
    ``EMAWeightAveraging``) leaves ``decay**N`` of the initial weights in the average after N steps
    (37 % after 1,000 steps at 0.999); the ramp, as in diffusers' ``EMAModel``, gives short runs a
    useful average too. It is used through Lightning's own ``WeightAveraging`` callback.

    It updates the averages in place, all float32 tensors of a device at once with ``torch._foreach``
    operations (three for the whole model instead of about five per parameter), and with the
    decay as a tensor, so a GPU never waits for the host.
    """

    def average(ema_params: list[Tensor], params: list[Tensor], num_averaged: Tensor) -> None:
        # In float32 whatever the weights' dtype: in bfloat16, 0.999 rounds to 1.0 and the EMA would freeze.
        n = num_averaged.to(torch.float32)
        keep = torch.clamp((1.0 + n) / (10.0 + n), max=decay)
        if all(e.dtype == torch.float32 for e in ema_params):
            # ema * d + param * (1 - d). Not _foreach_lerp_: it reads a tensor weight with .item().
            torch._foreach_mul_(ema_params, keep)
            torch._foreach_add_(ema_params, torch._foreach_mul(params, 1.0 - keep))
            return
        for ema_param, param in zip(ema_params, params):
            ema = ema_param.float()
            ema_param.copy_(ema + (param.float() - ema) * (1.0 - keep))

    return average
