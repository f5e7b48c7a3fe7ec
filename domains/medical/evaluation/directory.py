"""``evaluate mri2ct``: score a folder of synthetic CTs against a SynthRAD-layout reference folder.

Each patient's prediction is found in either layout (``find_prediction``), read on the reference grid
(``load_on_grid``) and scored with the per-volume metrics of ``metrics.py`` and ``texture.py``
(``score_patient_files``); where a 4-D file of the K samples lies beside it (``find_samples``), with the
distribution-free checks of ``ensemble.py``. The report keeps one row per patient and adds the mean and std over
patients (``summarise``), a bootstrap 95 % interval on each mean (``statistics.bootstrap_interval``), what a
calibrated sampler would show for the K the predictions were made with (``ensemble.calibrated_reference``, K read
from the files' sidecars), and, where per-voxel std files exist, one reliability curve over every patient's voxels.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sci_diffusion.atomic import write_json

from ..data.head_anatomy_v2 import SINUSES, STRUCTURE, STRUCTURES
from ..data.pairs import find_synthrad_pairs
from ..data.transforms import SYNTHRAD_HU_RANGE
from ..io.figures import reliability_diagram
from ..io.images import OUTPUT_SUFFIXES, read_volume
from ..io.masks import MASK_THRESHOLD, binary_mask
from ..io.nifti import MedicalInputError, load_volume, sidecar_path
from ..translation.calibration import read_calibration
from .conformal import DEFAULT_INTERVAL, fit_calibration, interval_coverage
from .ensemble import calibrated_reference, ensemble_scores
from .metrics import reliability_curve, score_patient, tissue_mae, uncertainty_coverage, uncertainty_error_correlation
from .statistics import bootstrap_interval
from .texture import ambiguous_fraction, gradient_texture

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


def find_samples(pred: Path) -> Path | None:
    """The K samples beside a prediction, as ``translate --samples-out`` writes them: ``<id>_samples.nii.gz`` beside
    ``<id>.nii.gz``, or ``sct_samples.nii.gz`` beside ``<id>/sct.nii.gz`` (NIfTI, (X, Y, Z, K)); None when absent."""
    stem = pred.name[: -len(next(s for s in OUTPUT_SUFFIXES if pred.name.endswith(s)))]
    found = [pred.with_name(f"{stem}_samples{s}") for s in (".nii.gz", ".nii")]
    return next((p for p in found if p.is_file()), None)


def recorded_translation(*paths: Path | None) -> dict[str, Any]:
    """How a prediction was made, from the JSON sidecar ``translate`` wrote beside the first of ``paths`` that has a
    readable one: ``{"samples": K, "checkpoint_sha256", "sampler", "steps"}`` (the keys it records), else ``{}``."""
    for path in paths:
        if path is None:
            continue
        sidecar = sidecar_path(path) if path.name.endswith((".nii.gz", ".nii")) else path.with_suffix(".json")
        try:
            record = json.loads(sidecar.read_text()) if sidecar.is_file() else None
        except (OSError, json.JSONDecodeError):
            record = None
        if isinstance(record, dict):
            return {key: record[key] for key in ("samples", "checkpoint_sha256", "sampler", "steps") if key in record}
    return {}


def load_samples_on_grid(path: Path, shape: tuple[int, ...], affine: np.ndarray, ref_path: str) -> np.ndarray:
    """The K samples at ``path`` as (K, X, Y, Z) HU, which must lie on the reference's grid.

    Raises:
        MedicalInputError: not a 4-D NIfTI on ``shape`` and ``affine``, naming both files.
    """
    array, aff, _ = load_volume(path)
    if array.ndim != 4 or array.shape[:3] != shape:
        raise MedicalInputError(f"{path} has shape {array.shape} but its reference {ref_path} has shape {shape} "
                                "(samples are (X, Y, Z, K)).")
    if not np.allclose(aff, affine, atol=1e-3):
        raise MedicalInputError(f"{path} has a different affine from its reference {ref_path}.")
    return np.moveaxis(array, -1, 0)


def sample_scores(samples: np.ndarray, ct: np.ndarray, mask: np.ndarray, classes_from: np.ndarray,
                  spacing_mm: np.ndarray) -> dict[str, Any]:
    """The distribution-free checks of one patient's K samples (``ensemble.ensemble_scores``) in the body, the
    fraction of ambiguous voxels in true bone and air averaged over the samples (``ambiguous_samples``), and the
    texture of one sample (``texture_sample``: a sample, not the K-mean, is what should look like a CT)."""
    body = binary_mask(mask)
    scores = ensemble_scores(samples[:, body], ct[body])
    per_sample = [ambiguous_fraction(s, classes_from, mask) for s in samples]
    scores["ambiguous_samples"] = {key: float(np.nanmean([p[key] for p in per_sample])) for key in per_sample[0]}
    scores["texture_sample"] = gradient_texture(samples[0], ct, mask, spacing_mm)
    return scores


def structure_mae(pred: np.ndarray, ct: np.ndarray, structures: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """MAE (HU) in each named structure of a phantom v2 structure map (``head_anatomy_v2.STRUCTURES``) inside the
    body, and in all the sinuses together (``sinuses``: frontal, maxillary, sphenoid, nasal cavity); NaN for a
    structure the field of view leaves out."""
    body, error = binary_mask(mask), np.abs(np.asarray(pred, np.float64) - np.asarray(ct, np.float64))
    ids = np.rint(structures).astype(np.int64)
    regions = {name: ids == index for index, name in STRUCTURES.items()}
    regions["sinuses"] = np.isin(ids, [STRUCTURE[name] for name in SINUSES])
    return {name: float(error[where & body].mean()) if (where & body).any() else float("nan")
            for name, where in regions.items()}


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


def score_patient_files(ref: dict[str, str], pred_path: Path, std_path: Path | None,
                        samples_path: Path | None = None) -> tuple[dict[str, Any], tuple[np.ndarray | None, ...]]:
    """One patient's metrics from files, and its ``(std or None without a std file, pred, ct)`` voxels in the mask.

    Returns:
        ``(scores, pooled)``: scores are mae, psnr, ssim, tissue_mae (air, soft_tissue, bone; classes from the
        reference's ``labels`` when present, else from its CT), texture (``texture.gradient_texture``), the
        ambiguous voxels of the prediction and of the reference CT itself (``texture.ambiguous_fraction``:
        ``ambiguous``, ``ambiguous_ct``), with a std file also uncertainty_error_r, coverage_1sigma and
        coverage_2sigma, with a samples file the ``samples`` checks (``sample_scores``); and the prediction's path.
    """
    ct, affine = read_volume(ref["ct"])
    mask = load_on_grid(Path(ref["mask"]), ct.shape, affine, ref["ct"])
    if not binary_mask(mask).any():  # every metric would be 0 / 0: MAE NaN, PSNR inf
        raise MedicalInputError(f"{ref['mask']} is an empty mask (no voxel > {MASK_THRESHOLD:g}), so patient {ref['id']} "
                                "cannot be scored.")
    pred = load_on_grid(pred_path, ct.shape, affine, ref["ct"])
    classes_from = load_on_grid(Path(ref["labels"]), ct.shape, affine, ref["ct"]) if "labels" in ref else ct
    scores: dict[str, Any] = score_patient(pred, ct, mask)
    scores["tissue_mae"] = tissue_mae(pred, ct, classes_from, mask)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    scores["texture"] = gradient_texture(pred, ct, mask, spacing)
    scores["ambiguous"] = ambiguous_fraction(pred, classes_from, mask)
    scores["ambiguous_ct"] = ambiguous_fraction(ct, classes_from, mask)
    if "structures" in ref:
        structures = load_on_grid(Path(ref["structures"]), ct.shape, affine, ref["ct"])
        scores["structure_mae"] = structure_mae(pred, ct, structures, mask)
    if samples_path is not None:
        scores["samples"] = sample_scores(load_samples_on_grid(samples_path, ct.shape, affine, ref["ct"]), ct, mask,
                                          classes_from, spacing)
    inside = binary_mask(mask)
    pooled = (None, pred[inside], ct[inside])
    if std_path is not None:
        std = load_on_grid(std_path, ct.shape, affine, ref["ct"])
        scores["uncertainty_error_r"] = uncertainty_error_correlation(std, pred, ct, mask)
        scores.update(uncertainty_coverage(std, pred, ct, mask))
        pooled = (std[inside], pred[inside], ct[inside])
    scores["prediction"] = str(pred_path)
    return scores, pooled


def per_patient_values(patients: dict[str, dict[str, Any]]) -> dict[str, list[float]]:
    """Every number as one list of floats over patients, nested ones named by their path (``"tissue_mae.bone"``,
    ``"samples.rank_histogram.chi2"``); lists and other values (the rank counts, paths, flags) are left out."""
    flat: dict[str, list[float]] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for sub, v in value.items():
                walk(f"{prefix}.{sub}" if prefix else str(sub), v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat.setdefault(prefix, []).append(float(value))

    for scores in patients.values():
        walk("", scores)
    return flat


def summarise(patients: dict[str, dict[str, Any]], reduce: Callable[[np.ndarray], float]) -> dict[str, float]:
    """``reduce`` (``np.nanmean``, ``np.nanstd``) of every metric over patients (``per_patient_values``); NaN entries
    (an empty tissue class) are skipped, and an all-NaN metric gives NaN (null in the JSON)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column -> NaN -> null
        return {k: float(reduce(np.asarray(v, dtype=np.float64))) for k, v in per_patient_values(patients).items()}


def intervals(patients: dict[str, dict[str, Any]]) -> dict[str, list[float]]:
    """The bootstrap 95 % interval ``[low, high]`` of every mean over patients (``statistics.bootstrap_interval``,
    NaN with fewer than two patients): subjects are the independent units."""
    return {k: list(bootstrap_interval(v)) for k, v in per_patient_values(patients).items()}


def samples_record(patients: dict[str, dict[str, Any]], ks: dict[str, int | None]) -> dict[str, Any]:
    """``{"samples": K, "calibrated_reference": ..}`` when every scored patient's prediction records one K
    (``ensemble.calibrated_reference``: what a calibrated sampler shows with that K), else ``{"samples": {id: K}}``."""
    found = {ks.get(pid) for pid in patients}
    if len(found) == 1 and None not in found:
        k = found.pop()
        return {"samples": k, "calibrated_reference": calibrated_reference(k)}
    return {"samples": {pid: ks.get(pid) for pid in patients}}


def score_folder(pred_dir: Path, refs: list[dict[str, str]], allow_missing: bool) -> dict[str, Any]:
    """Score every reference patient's prediction in ``pred_dir`` (``score_patient_files``).

    Returns:
        ``{"patients": {id: scores}, "missing": [ids], "voxels": {id: (std or None, pred, ct)} in the body,
        "made": {id: recorded_translation}}``.
    """
    out: dict[str, Any] = {"patients": {}, "missing": [], "voxels": {}, "made": {}}
    for ref in refs:
        pid = ref["id"]
        pred_path, std_path = find_prediction(pred_dir, pid)
        if pred_path is None:
            if not allow_missing:
                raise MedicalInputError(f"No prediction for patient {pid}: expected {pred_dir / (pid + '.nii.gz')} "
                                        f"or {pred_dir / pid / 'sct.nii.gz'}.")
            out["missing"].append(pid)
            continue
        samples_path = find_samples(pred_path)
        out["patients"][pid], out["voxels"][pid] = score_patient_files(ref, pred_path, std_path, samples_path)
        out["made"][pid] = recorded_translation(std_path, samples_path, pred_path)
    return out


def add_calibration(report: dict[str, Any], scored: dict[str, Any], calibration: str | os.PathLike | None,
                    calibration_out: str | os.PathLike | None, interval: float) -> None:
    """With ``calibration`` (a file), each patient's coverage of its calibrated ``interval`` (``interval`` rows); with
    ``calibration_out``, fit a split-conformal calibration on these patients and write it there
    (``conformal.fit_calibration``: these must be subjects the model never saw)."""
    voxels = scored["voxels"]
    if calibration is not None:
        cal = read_calibration(calibration)
        for pid, (std, pred, ct) in voxels.items():
            report["patients"][pid]["interval"] = interval_coverage(cal, ct, pred, std, interval)
        report["interval_calibration"] = str(calibration)
    if calibration_out is not None:
        ks = {made.get("samples") for made in scored["made"].values()}
        first = next(iter(scored["made"].values()))
        fitted = fit_calibration([(ct, pred, std) for std, pred, ct in voxels.values()],
                                 samples=ks.pop() if len(ks) == 1 and None not in ks else 1, subjects=list(voxels),
                                 provenance=first if all(m == first for m in scored["made"].values()) else {})
        fitted.save(calibration_out)
        report["calibration_out"] = {"path": str(calibration_out), "voxels": fitted.voxels,
                                     "factor_at_interval": fitted.factor(interval), "score_kind": fitted.score_kind}


def evaluate_directory(
    pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, out_json: str | os.PathLike, allow_missing: bool = False,
    reliability_png: str | os.PathLike | None = None, calibration: str | os.PathLike | None = None,
    calibration_out: str | os.PathLike | None = None, interval: float = DEFAULT_INTERVAL,
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
            uncertainty-error correlation and the 1- and 2-sigma coverage; an optional `<id>_samples.nii.gz` /
            `<id>/sct_samples.nii.gz` ((X, Y, Z, K) HU, ``translate --samples-out``) the distribution-free checks.
            K is read from the files' JSON sidecars (``translate`` writes them).

    Args:
        pred_dir, ref_dir: folders as above.
        out_json: the report, written atomically (NaN/inf as null).
        allow_missing: score the patients that have a prediction and list the others;
            by default a reference patient without a prediction is an error.
        reliability_png: where std files exist, draw the reliability diagram of all their patients'
            voxels together (``metrics.reliability_curve``, ``io.figures.reliability_diagram``) here.
        calibration: a calibration file (``translation.calibration``): report each patient's coverage of its
            ``interval`` (out of sample when these patients were not the calibration's).
        calibration_out: fit a split-conformal calibration on these patients and write it here.
        interval: the coverage level the calibration is checked (and ``calibration_out`` reported) at.

    Returns:
        {"protocol", "hu_range", "n_patients", "patients": {id: metrics}, "mean": .., "std": .., "interval95":
        {metric: [low, high]}, "samples": K, "calibrated_reference": .., "missing_predictions": [ids]}; metrics are
        those of ``score_patient_files``; with std files also "reliability_curve" over every patient's voxels in
        the mask; with a calibration, "interval" per patient.

    Raises:
        MedicalInputError: no reference patients, a missing prediction (unless allowed),
            no prediction at all, an unreadable file, a shape or affine mismatch, or an empty reference mask.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    if not pred_dir.is_dir():
        raise MedicalInputError(f"Prediction folder {pred_dir} does not exist.")
    refs = find_synthrad_pairs(ref_dir, require=("ct", "mask"))
    scored = score_folder(pred_dir, refs, allow_missing)
    patients = scored["patients"]
    if not patients:
        raise MedicalInputError(f"No predictions in {pred_dir} match the {len(refs)} patients of {ref_dir}.")
    report = {
        "protocol": PROTOCOL, "hu_range": list(SYNTHRAD_HU_RANGE), "synthetic_predictions": True,
        "pred_dir": str(pred_dir), "ref_dir": str(ref_dir), "n_patients": len(patients), "patients": patients,
        **samples_record(patients, {pid: made.get("samples") for pid, made in scored["made"].items()}),
        "missing_predictions": scored["missing"],
    }
    add_calibration(report, scored, calibration, calibration_out, interval)
    report.update({"mean": summarise(patients, np.nanmean), "std": summarise(patients, np.nanstd),
                   "interval95": intervals(patients)})
    pooled = [v for v in scored["voxels"].values() if v[0] is not None]
    if pooled:
        std, pred, ct = (np.concatenate(column) for column in zip(*pooled))
        report["reliability_curve"] = reliability_curve(std, pred, ct)
        if reliability_png is not None:
            curves = {f"{len(pooled)} patients": report["reliability_curve"]}
            report["reliability_png"] = str(reliability_diagram(curves, reliability_png))
    write_json(out_json, report)
    return report
