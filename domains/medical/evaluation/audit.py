"""A memorisation audit: is any synthetic volume a near copy of a training volume?

Every volume (synthetic and training) is read onto a RAS grid (``images.load_for_model``), resampled
linearly to a small common grid (``AUDIT_GRID`` voxels, the whole field of view) and standardised
(zero mean, unit variance); the similarity of two volumes is the Pearson correlation of these
signatures. For every synthetic volume the audit finds its most similar training volume.

A synthetic volume whose correlation reaches ``threshold`` is a *near copy*. As a reference the
report gives the same figure between training volumes (each training volume's nearest other one):
a generator that makes new subjects should sit in that range, not above it.

Limits (also in ETHICS.md): a whole-volume correlation on a coarse grid finds copies and near
copies of whole subjects, including intensity-rescaled ones; it does not find a copied organ or
slice inside a new volume, a copy moved by more than a few voxels or mirrored, or what a
membership-inference attack could learn. Passing it is necessary, not sufficient, for privacy.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from sci_diffusion.atomic import write_json

from ..data.pairs import find_synthrad_pairs
from ..io.figures import closest_pairs_panel
from ..io.images import load_for_model
from ..io.nifti import MedicalInputError

AUDIT_GRID = (48, 56, 48)  # voxels of the common grid: 4 mm over a 192 x 224 x 192 mm head
NEAR_COPY_CORRELATION = 0.95


def volume_signature(volume: np.ndarray, grid: Sequence[int] = AUDIT_GRID) -> np.ndarray:
    """(prod(grid),) float64: ``volume`` (X, Y, Z) resampled linearly to ``grid`` and standardised."""
    volume = np.asarray(volume, dtype=np.float64)
    small = ndimage.zoom(volume, [g / n for g, n in zip(grid, volume.shape)], order=1, grid_mode=True, mode="nearest")
    flat = small.ravel()
    spread = flat.std()
    if not np.isfinite(spread) or spread <= 1e-9 * max(1.0, abs(flat.mean())):
        raise MedicalInputError("A constant volume cannot be audited (its correlation with anything is undefined).")
    return (flat - flat.mean()) / spread


def correlation_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) Pearson correlations between the rows of two standardised signature matrices (N, D), (M, D)."""
    return a @ b.T / a.shape[1]


def nearest_training(synthetic: np.ndarray, training: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(index, correlation)`` of each synthetic signature's most correlated training signature."""
    c = correlation_matrix(synthetic, training)
    index = c.argmax(axis=1)
    return index, c[np.arange(len(index)), index]


def training_reference(training: np.ndarray) -> np.ndarray:
    """Each training signature's correlation with its nearest *other* training signature (needs two)."""
    c = correlation_matrix(training, training)
    np.fill_diagonal(c, -np.inf)
    return c.max(axis=1)


def _volumes(folder: str | os.PathLike, modality: str) -> dict[str, str]:
    """``{id: path}`` of the ``modality`` volume of every patient under a SynthRAD-layout ``folder``."""
    pairs = find_synthrad_pairs(folder, require=(modality,))
    return {p["id"]: p[modality] for p in pairs}


def _signatures(paths: dict[str, str], grid: Sequence[int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The signatures ``(N, prod(grid))`` of the volumes at ``paths`` and their middle axial slices ``{id: (X, Y)}``."""
    signatures, middles = [], {}
    for pid, path in paths.items():
        volume = load_for_model({"image": path}).arrays["image"]
        try:
            signatures.append(volume_signature(volume, grid))
        except MedicalInputError:
            raise MedicalInputError(f"{path} is constant; a constant volume cannot be audited.") from None
        middles[pid] = volume[:, :, volume.shape[2] // 2]
    return np.stack(signatures), middles


def audit_directories(synthetic_dir: str | os.PathLike, train_dir: str | os.PathLike, out_json: str | os.PathLike,
                      png: str | os.PathLike | None = None, modality: str = "ct",
                      threshold: float = NEAR_COPY_CORRELATION, grid: Sequence[int] = AUDIT_GRID,
                      pairs_in_png: int = 4) -> dict[str, Any]:
    """Audit a folder of synthetic subjects against the training subjects (both SynthRAD layout).

    Args:
        synthetic_dir, train_dir: folders of ``<id>/{mr,ct,...}`` volumes (any format ``images`` reads).
        out_json: the report, written atomically.
        png: draw the ``pairs_in_png`` closest synthetic/training pairs (middle axial slices) here.
        modality: which volume of each subject to compare (``ct`` or ``mr``).
        threshold: correlation from which a synthetic volume counts as a near copy.
        grid: the common grid of the signatures.

    Returns:
        {"synthetic": {id: {"nearest_training", "correlation", "near_copy"}}, "correlation": its
        distribution (min, median, max, quantiles), "fraction_near_copies", "near_copies",
        "training_reference": the training volumes' nearest-other correlations (min, median, max),
        "closer_than_any_two_training": how many synthetic volumes exceed that maximum, and the settings}.

    Raises:
        MedicalInputError: a folder without subjects, an unreadable or constant volume.
    """
    if modality not in ("ct", "mr"):
        raise MedicalInputError(f"--modality must be ct or mr, got {modality!r}.")
    if not 0 < threshold <= 1:
        raise MedicalInputError(f"--threshold is a correlation in (0, 1], got {threshold}.")
    synthetic_paths, train_paths = _volumes(synthetic_dir, modality), _volumes(train_dir, modality)
    synthetic, synthetic_middles = _signatures(synthetic_paths, grid)
    training, train_middles = _signatures(train_paths, grid)
    index, corr = nearest_training(synthetic, training)
    train_ids = list(train_paths)
    per_subject = {pid: {"nearest_training": train_ids[i], "correlation": round(float(c), 6), "near_copy": bool(c >= threshold)}
                   for pid, i, c in zip(synthetic_paths, index, corr)}
    reference = training_reference(training) if len(train_ids) > 1 else None

    def distribution(values: np.ndarray) -> dict[str, float]:
        q = np.quantile(values, [0.0, 0.05, 0.5, 0.95, 1.0])
        return dict(zip(("min", "p05", "median", "p95", "max"), (round(float(v), 6) for v in q)))

    report: dict[str, Any] = {
        "method": "Pearson correlation of whole volumes resampled to a common grid (nearest training volume)",
        "modality": modality, "grid": list(grid), "threshold": threshold,
        "synthetic_dir": str(synthetic_dir), "train_dir": str(train_dir),
        "n_synthetic": len(synthetic_paths), "n_training": len(train_ids),
        "synthetic": per_subject,
        "correlation": distribution(corr),
        "fraction_near_copies": float(np.mean(corr >= threshold)),
        "near_copies": [pid for pid, s in per_subject.items() if s["near_copy"]],
        "training_reference": None if reference is None else distribution(reference),
        "closer_than_any_two_training": None if reference is None else int((corr > reference.max()).sum()),
    }
    if png is not None:
        order = np.argsort(-corr)[:pairs_in_png]
        ids = list(synthetic_paths)
        shown = [(ids[i], train_ids[index[i]], float(corr[i])) for i in order]
        report["png"] = str(closest_pairs_panel(shown, synthetic_middles, train_middles, png))
    write_json(out_json, report)
    return report
