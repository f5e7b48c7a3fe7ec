"""Diversity of a synthetic data set (issue 31 §3): are its subjects as alike as real subjects are?

Each subject's CT is put on one grid first: the isotropic grid it was loaded on (``io.images.load_for_model``,
RAS voxel order), placed in a cube of ``box_mm`` (default 256 mm: 64^3 voxels at 4 mm) whose centre is the body's
centroid, rounded to a whole voxel so that nothing is interpolated (``body_cube``, as the memorisation audit does);
outside the field of view is -1000 HU. Two subjects' similarity is the SynthRAD2023 SSIM
(``metrics.ssim``: CT clipped to [-1024, 3000] HU, shifted to be non-negative, data range 4024 HU, skimage's
7-voxel window) averaged over the union of their two bodies, not over the whole cube, whose air would agree
whatever the anatomy. The figure is the mean over all pairs of a set; the target is a synthetic mean within
``DIVERSITY_TOLERANCE`` of the real one. Identical subjects give 1; speckle that real heads lack lowers it.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .body_cube import BACKGROUND_HU, body_centring, place_in_cube
from .metrics import ssim

BOX_MM = 256.0
DIVERSITY_TOLERANCE = 0.1


def centred_cube(ct: np.ndarray, body: np.ndarray, spacing_mm: float, box_mm: float = BOX_MM) -> tuple[np.ndarray, np.ndarray]:
    """``ct`` (X, Y, Z, HU) and ``body`` (X, Y, Z, bool) on an isotropic ``spacing_mm`` grid, shifted by whole voxels
    into an (n, n, n) cube (n = ``box_mm / spacing_mm`` rounded) centred on the body's centroid: ``(ct float32
    with -1000 HU outside the field of view, body bool)``. What lies outside the cube is left out."""
    n = max(8, int(round(box_mm / spacing_mm)))
    offset, _ = body_centring(body, n)
    return (place_in_cube(np.asarray(ct, np.float32), offset, n, BACKGROUND_HU),
            place_in_cube(np.asarray(body, np.float32), offset, n, 0.0) > 0.5)


def pairwise_ssim(cubes: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[float]:
    """SSIM (module docstring) of every pair of ``(ct, body)`` cubes of one shape, in pair order (i < j)."""
    return [ssim(a[0], b[0], mask=a[1] | b[1]) for i, a in enumerate(cubes) for b in cubes[i + 1:]]


def mean_pairwise_ssim(cubes: Sequence[tuple[np.ndarray, np.ndarray]]) -> float | None:
    """The mean of ``pairwise_ssim``; None for fewer than two subjects."""
    values = pairwise_ssim(cubes)
    return float(np.mean(values)) if values else None


def diversity_comparison(synthetic: Sequence, real: Sequence, spacing_mm: float, box_mm: float = BOX_MM) -> dict:
    """Mean pairwise SSIM among ``synthetic`` and among ``real`` subjects (each with ``ct`` and ``body``, (X, Y, Z),
    on isotropic ``spacing_mm`` grids), and the diversity target.

    Returns:
        ``{"synthetic", "real" (mean pairwise SSIM, None below two subjects), "difference" (synthetic - real;
        > 0: synthetic subjects more alike than real ones), "pairs": {"synthetic", "real"}, "box_mm", "target":
        {"met" (|difference| <= ``DIVERSITY_TOLERANCE``), "value" (synthetic), "real", "difference", "target"}}``.
    """
    cubes = {side: [centred_cube(s.ct, s.body, spacing_mm, box_mm) for s in subjects]
             for side, subjects in (("synthetic", synthetic), ("real", real))}
    syn, ref = mean_pairwise_ssim(cubes["synthetic"]), mean_pairwise_ssim(cubes["real"])
    difference = None if syn is None or ref is None else syn - ref
    n = {side: len(c) * (len(c) - 1) // 2 for side, c in cubes.items()}
    return {"synthetic": syn, "real": ref, "difference": difference, "pairs": n, "box_mm": box_mm,
            "target": {"met": difference is not None and abs(difference) <= DIVERSITY_TOLERANCE,
                       "value": syn, "real": ref, "difference": difference,
                       "target": f"mean pairwise CT SSIM within {DIVERSITY_TOLERANCE:g} of real subjects'"}}
