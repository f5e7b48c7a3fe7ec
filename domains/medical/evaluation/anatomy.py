"""Anatomy of a synthetic data set against real subjects (issue 31 §3): is the brain one piece, are the label
boundaries as smooth as real ones, and do neighbouring slices agree as they do in real CT (no striping)?

Volumes are (X, Y, Z) in RAS voxel order, as ``io.images.load_for_model`` gives them: axis 0 runs left -> right
(its slices are sagittal), axis 1 posterior -> anterior (coronal slices), axis 2 inferior -> superior (axial
slices). Every comparison is a ratio, synthetic over real, of the same figure at the same voxel spacing: the
figures themselves depend on the spacing (partial volume, staircase boundaries), their ratio much less.

- **Brain in one piece**: the brain is grey plus white matter (CSF is left out: its label also holds the spinal
  canal and the thin subarachnoid layer, which would join brain pieces that are apart); the share of its voxels
  in its largest 26-connected component (``scipy.ndimage.label`` with a 3 x 3 x 3 structure). Real phantom v2
  heads at 4 mm: 1.0.
- **Boundary roughness**: surface-to-volume ratio of each tissue (1/mm): the area of the voxel faces (6
  neighbours) between the tissue and any other label, over the tissue's volume; faces on the edge of the field of
  view are not counted. Speckled labels raise it (an isolated voxel has 6 faces); a ratio of 1 to real is
  real-like.
- **Striping**: per axis, the mean absolute CT difference (HU) between neighbouring slices over voxel pairs both in
  the body (``metrics.neighbour_slice_difference``); slices sampled on their own disagree along the axis they are
  stacked on. The ratio to real must lie within ``STRIPING_TOLERANCE`` of 1 on every axis (issue 31: "within
  20 % of real"): above, slices disagree (stripes); below, the volume is smoother than real CT along that axis.
  Speckle inside the slices raises the difference along the axes in their plane too; bands several slices wide
  change neighbouring slices little and are not what this figure sees.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .metrics import neighbour_slice_difference

BRAIN_TISSUES = ("grey_matter", "white_matter")
CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity
BRAIN_SHARE_MIN = 0.95
STRIPING_TOLERANCE = 0.2  # the neighbouring-slice difference within 20 % of real's, along every axis
AXES = ("sagittal (axis 0, R)", "coronal (axis 1, A)", "axial (axis 2, S)")  # the slices each axis stacks


def label_ids(names: dict[int, str], wanted: Sequence[str]) -> list[int]:
    """The label values of ``names`` (``{label: tissue name}``) whose name is in ``wanted``."""
    return sorted(int(k) for k, v in names.items() if v in wanted)


def largest_component_share(mask: np.ndarray) -> float:
    """Share (0..1) of the voxels of ``mask`` (X, Y, Z, bool) in its largest 26-connected component; NaN when
    empty."""
    regions, count = ndimage.label(np.asarray(mask, dtype=bool), structure=CONNECTIVITY)
    if count == 0:
        return float("nan")
    sizes = np.bincount(regions.ravel())[1:]
    return float(sizes.max() / sizes.sum())


def brain_component_share(labels: np.ndarray, names: dict[int, str]) -> float:
    """``largest_component_share`` of the brain (``BRAIN_TISSUES``) of one subject's ``labels`` (X, Y, Z)."""
    return largest_component_share(np.isin(labels, label_ids(names, BRAIN_TISSUES)))


def boundary_area(labels: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """(X, Y, Z) float64 mm^2: per voxel, the area of its faces shared with a voxel of another label (6
    neighbours; the faces of a pair count once for each of its two voxels)."""
    labels = np.asarray(labels)
    area = np.zeros(labels.shape, np.float64)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    for axis in range(3):
        face = float(np.prod(np.delete(spacing, axis)))
        differ = np.diff(labels, axis=axis) != 0
        lower = [slice(None)] * 3
        upper = [slice(None)] * 3
        lower[axis], upper[axis] = slice(0, -1), slice(1, None)
        area[tuple(lower)] += face * differ
        area[tuple(upper)] += face * differ
    return area


def surface_and_volume(labels: np.ndarray, names: dict[int, str], spacing_mm: Sequence[float]) -> dict[str, tuple[float, float]]:
    """``{tissue: (boundary area mm^2, volume mm^3)}`` of one subject, for every named tissue but label 0 (outside
    the body), and ``"all"``: every labelled voxel's boundary with another label over the labelled volume."""
    area = boundary_area(labels, spacing_mm)
    voxel = float(np.prod(spacing_mm))
    out = {}
    for label, name in names.items():
        inside = labels == int(label)
        if int(label) != 0 and inside.any():
            out[name] = (out.get(name, (0.0, 0.0))[0] + float(area[inside].sum()),
                         out.get(name, (0.0, 0.0))[1] + voxel * float(inside.sum()))
    body = labels > 0
    out["all"] = (float(area[body].sum()), voxel * float(body.sum()))
    return out


def surface_to_volume(subjects: Sequence[tuple[np.ndarray, dict[int, str]]], spacing_mm: Sequence[float]) -> dict[str, float]:
    """``{tissue: area / volume (1/mm)}`` pooled over subjects (sum of areas over sum of volumes), from
    ``(labels (X, Y, Z), {label: name})`` pairs on one ``spacing_mm``."""
    totals: dict[str, list[float]] = {}
    for labels, names in subjects:
        for name, (area, volume) in surface_and_volume(labels, names, spacing_mm).items():
            total = totals.setdefault(name, [0.0, 0.0])
            total[0] += area
            total[1] += volume
    return {name: a / v for name, (a, v) in totals.items() if v > 0}


def slice_differences(ct: np.ndarray, body: np.ndarray) -> list[float]:
    """Mean absolute CT difference (HU) between neighbouring slices along axes 0, 1, 2 (``AXES``), over voxel
    pairs both in ``body``; ``ct`` and ``body`` (X, Y, Z)."""
    return [neighbour_slice_difference(ct, body, axis=axis) for axis in range(3)]


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing, not finite, or b is 0."""
    if a is None or b is None or not np.isfinite(a) or not np.isfinite(b) or b == 0:
        return None
    return float(a / b)


def anatomy_comparison(synthetic: Sequence, real: Sequence, spacing_mm: Sequence[float]) -> dict:
    """Brain component share, boundary roughness and striping of synthetic subjects against real ones.

    Args:
        synthetic, real: subjects with ``ct`` (X, Y, Z) HU, ``body`` (X, Y, Z) bool, ``labels`` (X, Y, Z) int and
            ``names`` (``{label: tissue name}``), all on isotropic or equal ``spacing_mm`` grids.
        spacing_mm: (3,) the voxel size both sets are measured at (mm).

    Returns:
        ``{"brain_component_share": {"synthetic", "real"} (each: mean, min over subjects), "roughness":
        {tissue: {"synthetic", "real" (1/mm), "ratio"}} (tissues in both sets, and "all"), "slice_difference_hu":
        {axis name: {"synthetic", "real" (HU, mean over subjects), "ratio"}}}``.
    """
    def shares(subjects):
        values = [brain_component_share(s.labels, s.names) for s in subjects]
        return {"mean": float(np.nanmean(values)), "min": float(np.nanmin(values)), "per_subject": values}

    sv = {side: surface_to_volume([(s.labels, s.names) for s in subjects], spacing_mm)
          for side, subjects in (("synthetic", synthetic), ("real", real))}
    roughness = {name: {"synthetic": sv["synthetic"][name], "real": sv["real"][name],
                        "ratio": ratio(sv["synthetic"][name], sv["real"][name])}
                 for name in sv["real"] if name in sv["synthetic"]}
    diffs = {side: np.nanmean([slice_differences(s.ct, s.body) for s in subjects], axis=0)
             for side, subjects in (("synthetic", synthetic), ("real", real))}
    striping = {AXES[a]: {"synthetic": float(diffs["synthetic"][a]), "real": float(diffs["real"][a]),
                          "ratio": ratio(float(diffs["synthetic"][a]), float(diffs["real"][a]))}
                for a in range(3)}
    return {"brain_tissues": list(BRAIN_TISSUES), "connectivity": 26,
            "brain_component_share": {"synthetic": shares(synthetic), "real": shares(real)},
            "roughness_measure": "surface-to-volume ratio (1/mm) of each tissue, 6-neighbour voxel faces",
            "roughness": roughness, "slice_difference_hu": striping}


def anatomy_targets(anatomy: dict) -> dict[str, dict]:
    """Issue 31 §3's anatomy targets from ``anatomy_comparison``'s result: the synthetic brains' mean largest-piece
    share >= ``BRAIN_SHARE_MIN``, and per axis a slice-difference ratio within ``STRIPING_TOLERANCE`` of 1.
    Each ``{"met": bool, "value" (the share; the ratio), "target"}``, with ``"real"`` (the real share) or
    ``"synthetic_hu"``, ``"real_hu"`` (the slice differences)."""
    share = anatomy["brain_component_share"]["synthetic"]["mean"]
    out = {"brain_in_one_piece": {"met": bool(np.isfinite(share) and share >= BRAIN_SHARE_MIN), "value": share,
                                  "real": anatomy["brain_component_share"]["real"]["mean"],
                                  "target": f"mean share of grey + white matter in its largest 26-connected piece "
                                            f">= {BRAIN_SHARE_MIN:g}"}}
    for axis, row in anatomy["slice_difference_hu"].items():
        r = row["ratio"]
        out[f"no_striping_{axis.split()[0]}"] = {
            "met": r is not None and abs(r - 1.0) <= STRIPING_TOLERANCE, "value": r,
            "synthetic_hu": row["synthetic"], "real_hu": row["real"],
            "target": f"neighbouring-slice difference {1 - STRIPING_TOLERANCE:g}..{1 + STRIPING_TOLERANCE:g} x real's "
                      f"({axis} slices)"}
    return out
