"""Fidelity of synthetic medical data (issue 31 §3): does each tissue's CT fall where that tissue's Hounsfield
units lie, and does a synthetic data set obey its own labels as real subjects do?

``tissue_fidelity`` (the report page's table) checks one subject against the phantoms' HU ranges
(``data.phantom.TISSUE_CT_HU``). The rest measures a synthetic data set folder against a folder of real subjects
(``measure_dataset``): per tissue, the CT and MR inside each label (median, IQR, and the 1-D Wasserstein distance
between the two sets' pooled voxels: ``tissue_distributions``), the label targets (``label_targets``), the anatomy
(``anatomy.py``: the brain in one piece, boundary roughness, striping) and the diversity (``diversity.py``: mean
pairwise SSIM), with a ``targets`` block of met / not met per target.

Both sets are read the same way: each subject's ``ct``, ``mr``, ``mask`` and ``labels`` (SynthRAD layout,
``data.pairs.find_synthrad_pairs``) onto RAS voxel order at one isotropic ``spacing_mm`` (``io.images.load_for_model``:
linear for CT and MR, nearest for mask and labels; axis 2 runs inferior -> superior, its slices are axial). The body
is the mask (> 0.5), or the labelled voxels (label > 0) without one. The MR is in arbitrary units on both sides, so
it is compared only after the same normalisation of every subject (``MR_NORMALISATION``). Tissues are matched by
name (the ``tissue_labels`` of each folder's ``dataset.json``; phantom v2's ``TISSUE_LABELS_V2`` without one), so a
set written with phantom v1's ten labels (today's ``synthesize medical``) compares with phantom v2's thirteen on the
ten they share. Label 0 (the air around the head) is no tissue here.

The median is taken, not the mean: at 2-4 mm, partial volume pulls a thin layer's voxels (cortical bone,
CSF) towards their neighbours, which moves the mean more than the median.
"""
from __future__ import annotations

import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import wasserstein_distance

from ..data.head_anatomy_v2 import TISSUE_LABELS_V2
from ..data.pairs import find_synthrad_pairs
from ..data.phantom import TISSUE_CT_HU
from ..data.transforms import normalise_mr
from ..io.images import load_for_model
from .anatomy import anatomy_comparison, anatomy_targets
from .diversity import BOX_MM, diversity_comparison

# Issue 31 §3's label targets, by group of phantom v2 tissue names. CSF pools the ventricles (the same fluid);
# bone is cortical bone only (diploe, the marrow, is 350-650 HU in the phantoms, under the 700 HU target; teeth are
# not bone); air is the sinus and nasal-airway label inside the head (mastoid air cells, 3-6 mm and walled by bone,
# lie near -200 HU at 4 mm in real phantoms through partial volume: reported per tissue, no target).
TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "grey_matter": ("grey_matter",),
    "white_matter": ("white_matter",),
    "csf": ("csf", "ventricle"),
    "bone": ("cortical_bone",),
    "air": ("sinus_air",),
}
MEDIAN_TOLERANCE_HU = 30.0  # grey matter, white matter, CSF: the synthetic median within this of real's
BONE_MIN_HU = 700.0
AIR_MAX_HU = -800.0
W1_SAMPLES = 20_000  # voxels drawn (seeded, without replacement) per tissue and set for a Wasserstein distance
MR_NORMALISATION = ("per subject, the 0.5th and 99.5th percentiles of the MR inside the body mapped to -1 and +1, "
                    "clipped (data.transforms.normalise_mr, the models' own MR input)")


def tissue_fidelity(ct: np.ndarray, mr: np.ndarray, labels: np.ndarray, tissue_names: dict[int, str]) -> list[dict]:
    """One row per tissue present in ``labels``.

    Args:
        ct: (X, Y, Z) HU.
        mr: (X, Y, Z) the MR in its units (arbitrary).
        labels: (X, Y, Z) integer tissue labels, keys of ``tissue_names``.
        tissue_names: ``{label: name}`` (the data set's ``tissue_labels``); label 0, the air around the head,
            is left out.

    Returns:
        ``{"tissue", "voxels", "share" (of the labelled head, 0..1), "ct_median", "ct_p25", "ct_p75" (HU),
        "reference_hu" ((low, high) HU, or None for a tissue the phantoms do not define), "outside_hu" (how far
        the median lies below (< 0) or above (> 0) that range, 0 inside it; None without a range), "mr_median"}``
        per tissue, in label order.
    """
    labels = np.asarray(labels).astype(np.int64)
    head = max(int((labels > 0).sum()), 1)
    rows = []
    for label, name in sorted(tissue_names.items()):
        inside = labels == int(label)
        count = int(inside.sum())
        if count == 0 or int(label) == 0:
            continue
        p25, median, p75 = (float(v) for v in np.percentile(ct[inside], [25, 50, 75]))
        reference = TISSUE_CT_HU.get(name)
        outside = None if reference is None else min(median - reference[0], 0.0) + max(median - reference[1], 0.0)
        rows.append({"tissue": name, "voxels": count, "share": count / head, "ct_median": median, "ct_p25": p25,
                     "ct_p75": p75, "reference_hu": reference,
                     "outside_hu": outside,
                     "mr_median": float(np.median(mr[inside]))})
    return rows


@dataclass
class FidelitySubject:
    """One subject as the fidelity measures read it, all (X, Y, Z) on one RAS grid.

    Attributes:
        id: the subject's id.
        ct: float32 HU.
        mr: float32, normalised (``MR_NORMALISATION``; -1 outside the body).
        labels: int32 tissue labels, keys of ``names``.
        body: bool.
        names: ``{label: tissue name}``.
        spacing_mm: (3,) voxel size (mm).
    """

    id: str
    ct: np.ndarray
    mr: np.ndarray
    labels: np.ndarray
    body: np.ndarray
    names: dict[int, str]
    spacing_mm: np.ndarray


def fidelity_subject(pid: str, ct: np.ndarray, mr: np.ndarray, labels: np.ndarray, body: np.ndarray | None,
                     names: dict[int, str], spacing_mm: float | Sequence[float]) -> FidelitySubject:
    """A ``FidelitySubject`` from arrays (X, Y, Z): CT in HU, the MR in its own units (normalised here), labels,
    the body (None: label > 0)."""
    labels = np.rint(np.asarray(labels)).astype(np.int32)
    body = labels > 0 if body is None else np.asarray(body) > 0.5
    return FidelitySubject(pid, np.asarray(ct, np.float32), normalise_mr(np.asarray(mr, np.float32), body), labels,
                           body, {int(k): v for k, v in names.items()},
                           np.broadcast_to(np.asarray(spacing_mm, np.float64), (3,)).copy())


def dataset_tissue_names(folder: str | os.PathLike) -> dict[int, str]:
    """``{label: name}`` from the ``tissue_labels`` of ``folder/dataset.json``, or of the first ``*/dataset.json``
    under it (the parts of a sharded ``synthesize medical`` run); phantom v2's ``TISSUE_LABELS_V2`` without one."""
    folder = Path(folder)
    for path in [folder / "dataset.json", *sorted(folder.glob("*/dataset.json"))]:
        if path.is_file():
            table = json.loads(path.read_text()).get("tissue_labels")
            if table:
                return {int(k): str(v) for k, v in table.items()}
    return dict(TISSUE_LABELS_V2)


def load_dataset(folder: str | os.PathLike, spacing_mm: float = 4.0) -> list[FidelitySubject]:
    """Every subject of a SynthRAD folder (``find_synthrad_pairs``; each needs ``ct`` and ``labels``, ``mr`` and
    ``mask`` are read when present) at the isotropic ``spacing_mm``, in id order."""
    names = dataset_tissue_names(folder)
    subjects = []
    for pair in find_synthrad_pairs(folder, require=("ct",)):
        if "labels" not in pair:
            raise ValueError(f"Subject {pair['id']} in {folder} has no labels volume; the fidelity needs tissue labels.")
        keys = [k for k in ("ct", "mr", "mask", "labels") if k in pair]
        loaded = load_for_model({k: pair[k] for k in keys}, voxel_mm=spacing_mm)
        a = loaded.arrays
        mr = a.get("mr", np.zeros_like(a["ct"]))
        subjects.append(fidelity_subject(pair["id"], a["ct"], mr, a["labels"], a.get("mask"), names, loaded.zooms))
    return sorted(subjects, key=lambda s: s.id)


def tissue_values(subjects: Sequence[FidelitySubject], key: str, tissues: Sequence[str]) -> np.ndarray:
    """(N,) float64: the ``key`` ("ct" or "mr") voxels of all ``subjects`` whose label is named in ``tissues``."""
    parts = [getattr(s, key)[np.isin(s.labels, [k for k, v in s.names.items() if v in tissues and k != 0])]
             for s in subjects]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def distribution(values: np.ndarray) -> dict[str, float] | None:
    """``{"median", "p25", "p75", "iqr", "voxels"}`` of ``values``; None when empty."""
    if values.size == 0:
        return None
    p25, median, p75 = (float(v) for v in np.percentile(values, [25, 50, 75]))
    return {"median": median, "p25": p25, "p75": p75, "iqr": p75 - p25, "voxels": int(values.size)}


def subsample(values: np.ndarray, samples: int, seed: int, tag: str) -> np.ndarray:
    """At most ``samples`` of ``values``, drawn without replacement by ``default_rng([seed, crc32(tag)])``: the
    same draw for the same data, seed and tag (tissue, image, set), whatever was drawn before."""
    if values.size <= samples:
        return values
    return np.random.default_rng([seed, zlib.crc32(tag.encode())]).choice(values, samples, replace=False)


def w1(a: np.ndarray, b: np.ndarray, samples: int, seed: int, tag: str) -> float | None:
    """1-D Wasserstein distance (``scipy.stats.wasserstein_distance``; the values' units) between subsamples of
    ``a`` and ``b`` (``subsample``); None when either is empty."""
    if a.size == 0 or b.size == 0:
        return None
    return float(wasserstein_distance(subsample(a, samples, seed, f"{tag}/a"), subsample(b, samples, seed, f"{tag}/b")))


def real_spread(real: Sequence[FidelitySubject], key: str, tissue: str, samples: int, seed: int) -> float | None:
    """Mean over real subjects of the W1 between one real subject's voxels of ``tissue`` and the other real
    subjects' (leave one out): the distance real subjects have between themselves. None below two subjects."""
    values = [w1(tissue_values([s], key, (tissue,)), tissue_values([o for o in real if o is not s], key, (tissue,)),
                 samples, seed, f"{tissue}/{key}/loo/{s.id}") for s in real] if len(real) > 1 else []
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def tissue_distributions(synthetic: Sequence[FidelitySubject], real: Sequence[FidelitySubject],
                         samples: int = W1_SAMPLES, seed: int = 0) -> dict[str, dict]:
    """Per tissue named in either set (label 0 left out), CT (HU) and normalised MR inside the label, pooled over
    each set's subjects.

    Returns:
        ``{tissue: {"ct": {"synthetic", "real" (``distribution``, None where the set has no such voxel), "w1" (HU,
        synthetic against real), "w1_real_vs_real"  (``real_spread``)}, "mr": the same in normalised units}}``.
    """
    names = sorted({v for s in [*synthetic, *real] for k, v in s.names.items() if k != 0})
    out = {}
    for name in names:
        row = {}
        for key in ("ct", "mr"):
            syn, ref = tissue_values(synthetic, key, (name,)), tissue_values(real, key, (name,))
            row[key] = {"synthetic": distribution(syn), "real": distribution(ref),
                        "w1": w1(syn, ref, samples, seed, f"{name}/{key}"),
                        "w1_real_vs_real": real_spread(real, key, name, samples, seed)}
        if row["ct"]["synthetic"] or row["ct"]["real"]:
            out[name] = row
    return out


def group_ct_medians(subjects: Sequence[FidelitySubject], side: str = "synthetic") -> dict[str, float | None]:
    """``{group: median CT (HU)}`` of each of ``TARGET_GROUPS``, the group's tissues pooled over ``subjects`` (None
    when the labels name the group but no voxel has it).

    Raises:
        ValueError: the subjects' tissue names lack every tissue of a group (they cannot be judged on it).
    """
    named = {v for s in subjects for v in s.names.values()}
    missing = [g for g, tissues in TARGET_GROUPS.items() if not named & set(tissues)]
    if missing or not subjects:
        raise ValueError(f"The {side} labels name no tissue of the target group(s) {', '.join(missing) or 'any'} "
                         f"(expected one of {', '.join(t for g in missing for t in TARGET_GROUPS[g])}); "
                         "map its labels to phantom v2's tissue names.")
    out = {}
    for group, tissues in TARGET_GROUPS.items():
        values = tissue_values(subjects, "ct", tissues)
        out[group] = float(np.median(values)) if values.size else None
    return out


def label_targets(synthetic: dict[str, float | None], real: dict[str, float | None]) -> dict[str, dict]:
    """Issue 31 §3's label targets from ``group_ct_medians`` of both sets: grey matter, white matter and CSF CT
    medians within ``MEDIAN_TOLERANCE_HU`` of real's; bone >= ``BONE_MIN_HU``; air <= ``AIR_MAX_HU``.

    Returns:
        ``{"<group>_ct": {"met": bool, "value" (synthetic median, HU), "real" (HU), "difference_hu" (synthetic -
        real: the sign says which way it misses), "target"}}``; a group without voxels is not met.
    """
    out = {}
    for group in ("grey_matter", "white_matter", "csf", "bone", "air"):
        syn, ref = synthetic[group], real[group]
        diff = None if syn is None or ref is None else syn - ref
        if group == "bone":
            met, target = syn is not None and syn >= BONE_MIN_HU, f"median >= {BONE_MIN_HU:g} HU"
        elif group == "air":
            met, target = syn is not None and syn <= AIR_MAX_HU, f"median <= {AIR_MAX_HU:g} HU"
        else:
            met, target = diff is not None and abs(diff) <= MEDIAN_TOLERANCE_HU, \
                f"median within {MEDIAN_TOLERANCE_HU:g} HU of real's"
        out[f"{group}_ct"] = {"met": bool(met), "value": syn, "real": ref, "difference_hu": diff,
                              "target": f"{target} ({' + '.join(TARGET_GROUPS[group])})"}
    return out


def measure_subjects(synthetic: Sequence[FidelitySubject], real: Sequence[FidelitySubject], samples: int = W1_SAMPLES,
                     seed: int = 0, box_mm: float = BOX_MM) -> dict:
    """Every fidelity measure of ``synthetic`` against ``real`` subjects, all on one isotropic grid (the module
    docstring; ``measure_dataset`` reads them from folders).

    Returns:
        ``{"spacing_mm", "subjects": {"synthetic", "real"}, "mr_normalisation", "tissues"
        (``tissue_distributions``), "group_ct_median_hu": {"synthetic", "real"}, "anatomy"
        (``anatomy.anatomy_comparison``), "diversity" (``diversity.diversity_comparison``), "targets": {name: {"met",
        "value", "target", ...}}, "targets_met": "k/n"}``.

    Raises:
        ValueError: a set is empty, lacks a target group (``group_ct_medians``), or the two are on different
            voxel sizes.
    """
    if not synthetic or not real:
        raise ValueError("Fidelity needs at least one synthetic and one real subject.")
    spacing = synthetic[0].spacing_mm
    if any(not np.allclose(s.spacing_mm, spacing, atol=1e-3) for s in [*synthetic, *real]):
        raise ValueError("Synthetic and real subjects must be measured at one voxel size (load_dataset's spacing_mm).")
    medians = {"synthetic": group_ct_medians(synthetic, "synthetic"), "real": group_ct_medians(real, "real")}
    anatomy = anatomy_comparison(synthetic, real, spacing)
    diversity = diversity_comparison(synthetic, real, float(spacing[0]), box_mm)
    targets = {**label_targets(medians["synthetic"], medians["real"]), **anatomy_targets(anatomy),
               "diversity": diversity["target"]}
    return {"spacing_mm": spacing.tolist(), "subjects": {"synthetic": [s.id for s in synthetic],
                                                         "real": [s.id for s in real]},
            "mr_normalisation": MR_NORMALISATION, "w1_samples": samples, "seed": seed,
            "tissues": tissue_distributions(synthetic, real, samples, seed), "group_ct_median_hu": medians,
            "anatomy": anatomy, "diversity": diversity, "targets": targets,
            "targets_met": f"{sum(t['met'] for t in targets.values())}/{len(targets)}"}


def measure_dataset(synthetic_dir: str | os.PathLike, real_dir: str | os.PathLike, spacing_mm: float = 4.0,
                    samples: int = W1_SAMPLES, seed: int = 0, box_mm: float = BOX_MM) -> dict:
    """``measure_subjects`` of the subjects of a synthetic data set folder against those of a real one, both read at
    the isotropic ``spacing_mm`` (``load_dataset``), with the two folders recorded."""
    result = measure_subjects(load_dataset(synthetic_dir, spacing_mm), load_dataset(real_dir, spacing_mm),
                              samples, seed, box_mm)
    return {"synthetic_dir": str(synthetic_dir), "real_dir": str(real_dir), **result}
