"""What diffusion is for, measured (issue 30 §3): texture of a synthetic CT against the real CT, and the voxels
a model puts at an impossible in-between value where the truth is bone or air.

- **Texture**: a regression estimates the conditional median and so is smoother than any CT; samples need not be.
  ``gradient_texture`` compares the distributions of the gradient magnitude |grad HU| (HU/mm) inside the body:
  the ratio of their means (1 = as sharp as the CT, below 1 = too smooth) and their Wasserstein-1 distance
  (scipy's ``wasserstein_distance``, HU/mm; 0 for the same distribution).
- **Ambiguous voxels**: on T1 MR, cortical bone and air are both dark; a model that cannot tell them apart and
  minimises an absolute or squared error puts such voxels in between, at values neither tissue has.
  ``ambiguous_fraction`` counts, in true bone and in true air inside the body, the fraction of voxels predicted
  in -500..+300 HU. The real CT has some there too (partial volume at edges): score it as well, as the floor.

Volumes are (X, Y, Z) in HU on one grid; masks are read by ``io.masks.binary_mask``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage, stats

from ..io.masks import binary_mask
from .metrics import tissue_classes

AMBIGUOUS_BAND_HU = (-500.0, 300.0)  # neither air (about -1000) nor bone (above about +300): issue 30 §3


def gradient_magnitude(volume: np.ndarray, spacing_mm: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """|grad volume| (volume units per mm) by central differences (``np.gradient``) with the voxel size, (X, Y, Z)."""
    grads = np.gradient(np.asarray(volume, dtype=np.float64), *[float(s) for s in spacing_mm])
    return np.sqrt(sum(g * g for g in grads))


def interior(mask: np.ndarray) -> np.ndarray:
    """Body voxels whose six neighbours are body too: the gradient there does not see the -1000 HU background
    (sCT and CT share that edge, which would dominate both)."""
    return ndimage.binary_erosion(binary_mask(mask), border_value=0)


def gradient_texture(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray,
                     spacing_mm: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[str, float]:
    """The gradient-magnitude texture of ``pred`` against ``ref`` inside the body (``interior``).

    Returns:
        ``{"gradient_ratio": mean |grad pred| / mean |grad ref|, "gradient_w1": the Wasserstein-1 distance of the
        two distributions (HU/mm), "gradient_mean_ref": mean |grad ref| (HU/mm)}``; NaN for an empty interior.
    """
    inside = interior(mask)
    if not inside.any():
        return {"gradient_ratio": float("nan"), "gradient_w1": float("nan"), "gradient_mean_ref": float("nan")}
    g_pred, g_ref = gradient_magnitude(pred, spacing_mm)[inside], gradient_magnitude(ref, spacing_mm)[inside]
    mean_ref = float(g_ref.mean())
    return {"gradient_ratio": float(g_pred.mean()) / mean_ref if mean_ref > 0 else float("nan"),
            "gradient_w1": float(stats.wasserstein_distance(g_pred, g_ref)), "gradient_mean_ref": mean_ref}


def ambiguous_fraction(pred: np.ndarray, labels_or_ct: np.ndarray, mask: np.ndarray | None = None,
                       band: tuple[float, float] = AMBIGUOUS_BAND_HU) -> dict[str, float]:
    """In true bone and true air inside ``mask``, the fraction of ``pred`` voxels in ``band`` (HU, both ends in).

    Args:
        pred: (X, Y, Z) predicted CT in HU (one sample, a K-mean, or the reference CT for the floor).
        labels_or_ct: phantom labels or the reference CT: which voxels are bone and air (``metrics.tissue_classes``).
        mask: the body; None: every voxel.

    Returns:
        ``{"bone": .., "air": .., "bone_and_air": ..}`` fractions in [0, 1]; NaN for a class with no voxel.
    """
    pred = np.asarray(pred, dtype=np.float64)
    body = np.ones(pred.shape, bool) if mask is None else binary_mask(mask)
    classes = tissue_classes(labels_or_ct)
    inside = (pred >= band[0]) & (pred <= band[1])
    out = {}
    for name, where in (("bone", classes["bone"]), ("air", classes["air"]),
                        ("bone_and_air", classes["bone"] | classes["air"])):
        sel = where & body
        out[name] = float(inside[sel].mean()) if sel.any() else float("nan")
    return out
