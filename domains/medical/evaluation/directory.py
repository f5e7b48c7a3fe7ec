"""``evaluate mri2ct``: score a folder of synthetic CTs against a SynthRAD-layout reference folder.

Each patient's prediction is found in either layout (``find_prediction``), read on the reference grid
(``load_on_grid``) and scored with the per-volume metrics of ``metrics.py`` (``score_patient_files``);
the report adds the mean and std over patients (``summarise``) and, where per-voxel std files exist,
one reliability curve over every patient's voxels.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sci_diffusion.atomic import write_json

from ..data.pairs import find_synthrad_pairs
from ..data.transforms import SYNTHRAD_HU_RANGE
from ..io.figures import reliability_diagram
from ..io.images import OUTPUT_SUFFIXES, read_volume
from ..io.nifti import MedicalInputError
from .metrics import reliability_curve, score_patient, tissue_mae, uncertainty_coverage, uncertainty_error_correlation

PROTOCOL = "SynthRAD2023 Task 1 image metrics (MAE, PSNR, SSIM in the body mask)"


def find_prediction(pred_dir: Path, pid: str) -> tuple[Path | None, Path | None]:
    """(prediction, std) paths of one patient in either supported layout, or None.

    Raises:
        MedicalInputError: the patient has more than one prediction.
    """
    flat = [pred_dir / f"{pid}{s}" for s in OUTPUT_SUFFIXES]  # what ``translate`` writes
    nested = [pred_dir / pid / f"sct{s}" for s in OUTPUT_SUFFIXES]
    found = [p for p in flat + nested if p.is_file()]
    if len(found) > 1:
        raise MedicalInputError(f"Patient {pid} has more than one prediction ({', '.join(map(str, found))}); keep one.")
    if not found:
        return None, None
    pred = found[0]
    std_candidates = [pred_dir / f"{pid}_std{s}" for s in OUTPUT_SUFFIXES] if pred in flat else [
        pred_dir / pid / f"sct_std{s}" for s in OUTPUT_SUFFIXES
    ]
    std = next((p for p in std_candidates if p.is_file()), None)
    return pred, std


def load_on_grid(path: Path, shape: tuple[int, ...], affine: np.ndarray, ref_path: str) -> np.ndarray:
    """The volume at ``path`` (X, Y, Z), which must lie on its reference's grid (``shape``, ``affine`` within 1e-3 mm).

    Raises:
        MedicalInputError: another shape or affine, naming both files.
    """
    array, aff = read_volume(path)
    if array.shape != shape:
        raise MedicalInputError(f"{path} has shape {array.shape} but its reference {ref_path} has shape {shape}.")
    if not np.allclose(aff, affine, atol=1e-3):
        raise MedicalInputError(f"{path} has a different affine from its reference {ref_path}.")
    return array


def score_patient_files(ref: dict[str, str], pred_path: Path,
                        std_path: Path | None) -> tuple[dict[str, Any], tuple[np.ndarray, ...] | None]:
    """One patient's metrics from files, and its ``(std, pred, ct)`` voxels in the mask when a std file exists.

    Returns:
        ``(scores, pooled)``: scores are mae, psnr, ssim, tissue_mae (air, soft_tissue, bone; classes from the
        reference's ``labels`` when present, else from its CT), with a std file also uncertainty_error_r,
        coverage_1sigma and coverage_2sigma; and the prediction's path.
    """
    ct, affine = read_volume(ref["ct"])
    mask = load_on_grid(Path(ref["mask"]), ct.shape, affine, ref["ct"])
    pred = load_on_grid(pred_path, ct.shape, affine, ref["ct"])
    classes_from = load_on_grid(Path(ref["labels"]), ct.shape, affine, ref["ct"]) if "labels" in ref else ct
    scores: dict[str, Any] = score_patient(pred, ct, mask)
    scores["tissue_mae"] = tissue_mae(pred, ct, classes_from, mask)
    pooled = None
    if std_path is not None:
        std = load_on_grid(std_path, ct.shape, affine, ref["ct"])
        scores["uncertainty_error_r"] = uncertainty_error_correlation(std, pred, ct, mask)
        scores.update(uncertainty_coverage(std, pred, ct, mask))
        inside = mask > 0
        pooled = (std[inside], pred[inside], ct[inside])
    scores["prediction"] = str(pred_path)
    return scores, pooled


def summarise(patients: dict[str, dict[str, Any]], reduce: Callable[[np.ndarray], float]) -> dict[str, float]:
    """``reduce`` (``np.nanmean``, ``np.nanstd``) of every metric over patients, nested ones as ``"tissue_mae.bone"``;
    NaN entries (an empty tissue class) are skipped, and an all-NaN metric gives NaN (null in the JSON)."""
    flat: dict[str, list[float]] = {}
    for scores in patients.values():
        for key, value in scores.items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    flat.setdefault(f"{key}.{sub}", []).append(v)
            elif isinstance(value, float):
                flat.setdefault(key, []).append(value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column -> NaN -> null
        return {k: float(reduce(np.asarray(v, dtype=np.float64))) for k, v in flat.items()}


def evaluate_directory(
    pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, out_json: str | os.PathLike, allow_missing: bool = False,
    reliability_png: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score a folder of synthetic CTs against a SynthRAD-layout reference folder.

    Layouts:
        ref_dir: `<ref>/<id>/ct.nii.gz` and `mask.nii.gz` (SynthRAD2023) or `ct.mha` and `mask.mha`
            (SynthRAD2025); the mr is ignored; found at any depth, so `Task1/brain` or `Task1` both
            work (``pairs.find_synthrad_pairs``). An optional `labels` volume (phantoms) gives the
            tissue classes; otherwise they come from the reference CT.
        pred_dir: either `<pred>/<id>.nii.gz` or `<pred>/<id>/sct.nii.gz` (`.nii` and `.mha` too), in
            HU, on the reference grid (same shape; affines, RAS+, within 1e-3 mm, whatever the formats).
            An optional `<id>_std.nii.gz` / `<id>/sct_std.nii.gz` (per-voxel std in HU) adds the
            uncertainty-error correlation and the 1- and 2-sigma coverage.

    Args:
        pred_dir, ref_dir: folders as above.
        out_json: the report, written atomically (NaN/inf as null).
        allow_missing: score the patients that have a prediction and list the others;
            by default a reference patient without a prediction is an error.
        reliability_png: where std files exist, draw the reliability diagram of all their patients'
            voxels together (``metrics.reliability_curve``, ``io.figures.reliability_diagram``) here.

    Returns:
        {"protocol", "hu_range", "n_patients", "patients": {id: metrics}, "mean": .., "std": ..,
        "missing_predictions": [ids]}; metrics are mae, psnr, ssim, tissue_mae.{air,
        soft_tissue,bone}, and uncertainty_error_r, coverage_1sigma and coverage_2sigma when a std
        file exists; then also "reliability_curve" over every patient's voxels in the mask.

    Raises:
        MedicalInputError: no reference patients, a missing prediction (unless allowed),
            no prediction at all, an unreadable file, or a shape or affine mismatch.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    if not pred_dir.is_dir():
        raise MedicalInputError(f"Prediction folder {pred_dir} does not exist.")
    refs = find_synthrad_pairs(ref_dir, require=("ct", "mask"))
    patients: dict[str, dict[str, Any]] = {}
    missing = []
    pooled: list[tuple[np.ndarray, ...]] = []  # (std, pred, ct) in the mask, for the reliability curve
    for ref in refs:
        pid = ref["id"]
        pred_path, std_path = find_prediction(pred_dir, pid)
        if pred_path is None:
            if not allow_missing:
                raise MedicalInputError(f"No prediction for patient {pid}: expected {pred_dir / (pid + '.nii.gz')} "
                                        f"or {pred_dir / pid / 'sct.nii.gz'}.")
            missing.append(pid)
            continue
        patients[pid], voxels = score_patient_files(ref, pred_path, std_path)
        if voxels is not None:
            pooled.append(voxels)
    if not patients:
        raise MedicalInputError(f"No predictions in {pred_dir} match the {len(refs)} patients of {ref_dir}.")
    report = {
        "protocol": PROTOCOL, "hu_range": list(SYNTHRAD_HU_RANGE), "synthetic_predictions": True,
        "pred_dir": str(pred_dir), "ref_dir": str(ref_dir), "n_patients": len(patients), "patients": patients,
        "mean": summarise(patients, np.nanmean), "std": summarise(patients, np.nanstd), "missing_predictions": missing,
    }
    if pooled:
        std, pred, ct = (np.concatenate(column) for column in zip(*pooled))
        report["reliability_curve"] = reliability_curve(std, pred, ct)
        if reliability_png is not None:
            curves = {f"{len(pooled)} patients": report["reliability_curve"]}
            report["reliability_png"] = str(reliability_diagram(curves, reliability_png))
    write_json(out_json, report)
    return report
