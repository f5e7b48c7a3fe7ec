"""Lightning callbacks of the core."""
from __future__ import annotations

import csv
from pathlib import Path

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
        folder = getattr(trainer.checkpoint_callback, "dirpath", None)
        if folder is not None and trainer.global_step > 0:
            trainer.save_checkpoint(Path(folder) / "last.ckpt")


def plot_loss_curve(metrics_csv: Path, out_png: Path) -> None:
    """Plot every ``*loss*`` column of a CSVLogger file against the step."""
    import matplotlib

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
    """An ``AveragedModel`` ``avg_fn``: EMA whose decay ramps up as ``min(decay, (1 + n) / (10 + n))``.

    ``n`` is the number of updates so far. A fixed decay from the first step (Lightning's
    ``EMAWeightAveraging``) leaves ``decay**N`` of the initial weights in the average after N steps
    (37 % after 1,000 steps at 0.999); the ramp, as in diffusers' ``EMAModel``, gives short runs a
    useful average too. It is used through Lightning's own ``WeightAveraging`` callback.
    """

    def average(ema_param: Tensor, param: Tensor, num_averaged: Tensor) -> Tensor:
        n = num_averaged.to(ema_param.dtype)
        d = torch.clamp((1.0 + n) / (10.0 + n), max=decay)
        return ema_param + (param - ema_param) * (1.0 - d)

    return average
