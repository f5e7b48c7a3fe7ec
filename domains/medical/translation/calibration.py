"""Per-voxel intervals that cover as often as they say, calibrated on held-out subjects (split conformal), which
``translate --interval LEVEL`` writes (issue 30 §2).

**Why split conformal, not cross-fitting.** Both answer the same flaw: the scale map and the residual model learn
the regression's residuals on the subjects the regression was trained on, which are smaller than on new subjects,
so the model is overconfident. Cross-fitting (k folds) would retrain the regression k times so that the residual
model sees out-of-fold residuals: k times the regression's budget, and the intervals would still be only as
calibrated as the residual model is. Split conformal calibration needs no retraining: run the trained model on
subjects it never saw, take the nonconformity score of every body voxel, and widen (or narrow) every interval by
the score's empirical quantile. Whatever the model, the interval then covers a new voxel with probability at
least LEVEL, provided the new subject is exchangeable with the calibration subjects (Vovk et al. 2005; Lei et
al. 2018). So it fixes an overconfident model as well as an underconfident one, at the cost of a few held-out
subjects. What it cannot do: hold on a population it was not calibrated on (another scanner, another contrast
family), where exchangeability fails; the benchmark measures that (issue 30 targets).

**The score** (``score_kind``):
- ``normalised`` (K >= 2 samples): ``|ct - mean| / max(std, 1 HU)``, mean and std of the K samples (ddof 1). The
  interval is ``mean +- f * max(std, 1 HU)``: wide where the samples disagree (locally weighted conformal).
- ``absolute`` (one answer: a regression, or K = 1): ``|ct - pred|`` (HU); the interval is ``pred +- f``.

Within one subject, voxels are not independent, so the guarantee is for the fraction of voxels covered in
expectation over subjects, not for every subject; ``evaluate mri2ct`` reports each subject's coverage.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sci_diffusion.atomic import write_json
from sci_diffusion.errors import UserError

CALIBRATION_FORMAT = "sci-diffusion split-conformal interval calibration v1"
STD_FLOOR_HU = 1.0  # the samples of a residual model can agree to a fraction of a HU where the regression is sure
LEVELS = tuple(round(0.01 * i, 2) for i in range(1, 100)) + (0.995, 0.999)  # the coverages a calibration serves


@dataclass(frozen=True)
class ConformalCalibration:
    """A split-conformal calibration: the factor ``f`` that makes ``translate``'s interval cover each LEVEL.

    Attributes:
        score_kind: ``normalised`` (interval ``mean +- f * max(std, 1 HU)``, K >= 2) or ``absolute``
            (``pred +- f`` HU).
        levels: the coverages served, increasing (``LEVELS``).
        factors: for each level, the conformal quantile of the calibration scores: the ``ceil((n + 1) level)``-th
            smallest of the n scores (inf where that exceeds n).
        samples: K, the number of samples the calibration predictions were the mean of.
        voxels: n, the number of calibration scores (body voxels of every calibration subject).
        subjects: the calibration subjects' ids.
        checkpoint_sha256, sampler, steps: how the calibration predictions were made, when their sidecars say
            (``translate`` refuses a calibration made with another checkpoint, K, sampler or step count).
    """

    score_kind: str
    levels: tuple[float, ...]
    factors: tuple[float, ...]
    samples: int
    voxels: int
    subjects: tuple[str, ...] = ()
    checkpoint_sha256: str | None = None
    sampler: str | None = None
    steps: int | None = None
    format: str = field(default=CALIBRATION_FORMAT)

    def factor(self, level: float) -> float:
        """``f`` for coverage ``level`` in (0, 1): the stored quantile, linearly interpolated between stored levels.

        Raises:
            UserError: a level outside the stored range.
        """
        if not self.levels[0] <= level <= self.levels[-1]:
            raise UserError(f"--interval must lie in [{self.levels[0]:g}, {self.levels[-1]:g}], got {level:g}.")
        return float(np.interp(level, self.levels, self.factors))

    def bounds(self, pred: np.ndarray, std: np.ndarray | None, level: float) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)`` HU, shaped like ``pred``: the interval that covers with probability ``level``."""
        width = self.factor(level) * (np.maximum(std, STD_FLOOR_HU) if self.score_kind == "normalised" else 1.0)
        return (pred - width).astype(np.float32), (pred + width).astype(np.float32)

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON (atomically; inf as null)."""
        write_json(path, {**asdict(self), "levels": list(self.levels), "factors": list(self.factors),
                          "subjects": list(self.subjects)})


def nonconformity_scores(ct: np.ndarray, pred: np.ndarray, std: np.ndarray | None) -> np.ndarray:
    """The scores of calibration voxels, float64 like ``ct``: ``|ct - pred| / max(std, 1 HU)`` with a std (K >= 2),
    else ``|ct - pred|`` (HU)."""
    error = np.abs(np.asarray(ct, np.float64) - np.asarray(pred, np.float64))
    return error if std is None else error / np.maximum(np.asarray(std, np.float64), STD_FLOOR_HU)


def conformal_factors(scores: np.ndarray, levels: tuple[float, ...] = LEVELS) -> tuple[float, ...]:
    """The split-conformal quantile of ``scores`` at each level: the ``ceil((n + 1) level)``-th smallest score
    (Lei et al. 2018), inf when that rank exceeds n (too few scores for the level)."""
    ordered = np.sort(np.asarray(scores, np.float64).ravel())
    n = ordered.size
    ranks = [math.ceil((n + 1) * level) for level in levels]
    return tuple(float(ordered[r - 1]) if r <= n else math.inf for r in ranks)


def calibration_beside(ckpt: str | os.PathLike) -> Path | None:
    """The calibration that ships with a checkpoint, ``<name>.calibration.json`` beside ``<name>.ckpt``, or None.

    A bundled model's calibration was fitted on held-out subjects with one K, sampler and step count, which it
    records; ``check_calibration_fits`` refuses a run with others."""
    if not str(ckpt):
        return None
    path = Path(ckpt).with_suffix(".calibration.json")
    return path if path.is_file() else None


def read_calibration(path: str | os.PathLike) -> ConformalCalibration:
    """A calibration written by ``ConformalCalibration.save``.

    Raises:
        UserError: not readable, not JSON, or not a calibration of this format (one sentence naming the file).
    """
    try:
        record: dict[str, Any] = json.loads(open(path, encoding="utf-8").read())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not a readable calibration file ({type(err).__name__}).") from None
    if not isinstance(record, dict) or record.get("format") != CALIBRATION_FORMAT:
        raise UserError(f"{path} is not a sci-diffusion interval calibration (made by evaluate mri2ct "
                        "--calibration-out).")
    factors = tuple(math.inf if f is None else float(f) for f in record["factors"])
    return ConformalCalibration(score_kind=record["score_kind"], levels=tuple(record["levels"]), factors=factors,
                                samples=int(record["samples"]), voxels=int(record["voxels"]),
                                subjects=tuple(record.get("subjects") or ()),
                                checkpoint_sha256=record.get("checkpoint_sha256"), sampler=record.get("sampler"),
                                steps=record.get("steps"))


def check_calibration_fits(calibration: ConformalCalibration, path: str | os.PathLike, samples: int,
                           checkpoint_sha256: str | None, sampler: str | None, steps: int | None) -> None:
    """Refuse, in one sentence, a calibration made for other predictions: another K, checkpoint, sampler or step
    count changes the scores' law (what the calibration does not record is not checked).

    Raises:
        UserError: the first mismatch, naming the file.
    """
    if calibration.score_kind == "normalised" and samples < 2:
        raise UserError(f"{path} calibrates intervals from the std of {calibration.samples} samples; use --samples "
                        f"{calibration.samples}.")
    checks = (("--samples", calibration.samples, samples), ("checkpoint", calibration.checkpoint_sha256, checkpoint_sha256),
              ("--sampler", calibration.sampler, sampler), ("--steps", calibration.steps, steps))
    for what, made, asked in checks:
        if made is not None and asked is not None and made != asked:
            raise UserError(f"{path} was calibrated with {what} {made}, not {asked}: calibrate again with these "
                            "settings (evaluate mri2ct --calibration-out).")
