"""Fitting and checking the split-conformal interval calibration of ``translation.calibration`` on scored subjects
(``evaluate mri2ct --calibration-out`` fits one on held-out subjects, ``--calibration`` checks one on others).

Fit on subjects that neither the regression nor the residual model saw (the benchmark's calibration subjects),
check on yet others (its test subjects): coverage near the asked level there is the out-of-sample claim.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..translation.calibration import LEVELS, ConformalCalibration, conformal_factors, nonconformity_scores

DEFAULT_INTERVAL = 0.9


def fit_calibration(voxels: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]], samples: int,
                    subjects: Sequence[str], provenance: dict | None = None) -> ConformalCalibration:
    """A split-conformal calibration from calibration subjects' body voxels.

    Args:
        voxels: per subject ``(ct, pred, std)`` 1-D arrays of its body voxels (HU); ``std`` None for a single
            answer (a regression, K = 1), then the score is the absolute error.
        samples: K, the number of samples each ``pred`` is the mean of.
        subjects: the subjects' ids, recorded.
        provenance: ``checkpoint_sha256``, ``sampler``, ``steps`` of the predictions (from their sidecars), recorded
            so that ``translate`` refuses the calibration for other settings.

    Raises:
        ValueError: no voxels, or some subjects with a std and some without.
    """
    if not voxels:
        raise ValueError("a calibration needs at least one subject's voxels.")
    with_std = {std is not None for _, _, std in voxels}
    if len(with_std) != 1:
        raise ValueError("either every calibration subject has a std (K >= 2 samples) or none has.")
    scores = np.concatenate([nonconformity_scores(ct, pred, std) for ct, pred, std in voxels])
    provenance = provenance or {}
    return ConformalCalibration(score_kind="normalised" if with_std.pop() else "absolute",
                                levels=LEVELS,
                                factors=conformal_factors(scores), samples=int(samples), voxels=int(scores.size),
                                subjects=tuple(subjects), checkpoint_sha256=provenance.get("checkpoint_sha256"),
                                sampler=provenance.get("sampler"), steps=provenance.get("steps"))


def interval_coverage(calibration: ConformalCalibration, ct: np.ndarray, pred: np.ndarray, std: np.ndarray | None,
                      level: float = DEFAULT_INTERVAL) -> dict[str, float]:
    """How often the calibrated interval at ``level`` covers the truth on these voxels (1-D HU arrays), and its mean
    width (HU): ``{"level", "coverage", "mean_width_hu"}``."""
    lower, upper = calibration.bounds(np.asarray(pred, np.float64), None if std is None else np.asarray(std), level)
    ct = np.asarray(ct, np.float64)
    covered = (lower <= ct) & (ct <= upper)
    return {"level": float(level), "coverage": float(covered.mean()) if ct.size else float("nan"),
            "mean_width_hu": float((upper - lower).mean()) if ct.size else float("nan")}
