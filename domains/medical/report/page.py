"""The medical report pages (``sci-diffusion report``; ``--report`` on ``translate``, ``evaluate mri2ct`` and
``synthesize medical``): one HTML file per run, with linked volume views (``viewer.py``), every view marked
SYNTHETIC where its data are.

- a synthetic CT (``translate``): its settings, the SynthRAD metrics against the CT when there is one, and MR,
  synthetic CT, CT, |error| and uncertainty as linked views;
- ``evaluate mri2ct``'s metrics: every patient's metrics and their mean, the reliability diagram, and the views
  of the patient with the largest MAE;
- a data set (``synthesize medical``, ``phantom``): its provenance, the contact sheet, the per-tissue fidelity of
  each subject's CT, and the first subject's MR, CT and labels as linked views.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from sci_diffusion.report.page import ReportPage, html_table, png_data_uri
from sci_diffusion.report.run_files import find_recorded_path

from ..data.pairs import find_synthrad_pairs
from ..evaluation.fidelity import tissue_fidelity
from ..evaluation.metrics import score_patient
from ..io.figures import CT_WINDOW_HU, ERROR_MAX_HU, reliability_diagram
from ..io.images import read_volume
from ..io.nifti import MedicalInputError
from .run_output import dataset_record, evaluation_record, locate_translation, sidecar_of, worst_patient
from .viewer import VolumeView, add_volume_viewer
from .volumes import page_volume

SYNTHETIC_NOTICE = "SYNTHETIC: computer-generated images (sci-diffusion), not a patient's; not for clinical use"
TRANSLATION_FACTS = ("model", "checkpoint", "sampler", "steps", "spacing", "samples", "seed", "shared_noise",
                     "input_voxel_mm", "model_voxel_mm", "seconds", "mr", "mask", "uncertainty")
METRIC_COLUMNS = (("mae", "MAE (HU)", 1), ("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 4), ("tissue_mae.bone", "bone MAE", 1),
                  ("tissue_mae.soft_tissue", "soft tissue MAE", 1), ("tissue_mae.air", "air MAE", 1),
                  ("uncertainty_error_r", "std-|error| r", 3), ("coverage_1sigma", "within 1 std", 3),
                  ("coverage_2sigma", "within 2 std", 3))
FIDELITY_SUBJECTS = 8  # subjects in the fidelity table (each is read whole)
FIDELITY_TOLERANCE_HU = 25.0  # a 2 mm phantom's own medians lie up to ~12 HU outside their tissue's range


def write_report(run_output: Path, out: Path) -> str:
    """Write the page of a medical run output (``run_output.recognises``) to ``out``; returns one line naming it
    and its size."""
    path = Path(run_output)
    if path.is_dir():
        return write_dataset_report(path, out)
    if evaluation_record(path) is not None:
        return write_evaluation_report(path, out)
    return write_translation_report(path, out)


def is_synthetic(path: Path) -> bool:
    """Whether a volume says it is synthetic: SYNTHETIC in its NIfTI description, or its sidecar's ``synthetic``."""
    sidecar = sidecar_of(path) or {}
    if sidecar.get("synthetic"):
        return True
    if path.name.lower().endswith((".nii", ".nii.gz")):
        return b"SYNTHETIC" in bytes(nib.load(str(path)).header["descrip"]).upper()
    return False


def translation_views(files: dict[str, Path | None]) -> tuple[list[VolumeView], dict[str, np.ndarray]]:
    """The linked views of one translation (``mr``, ``sct`` and any of ``ct``, ``mask``, ``std``) and the arrays read.

    Raises:
        MedicalInputError: a volume that is not on the MR's grid.
    """
    arrays, affine = {}, None
    for name in ("mr", "sct", "ct", "mask", "std"):
        if files.get(name) is None:
            continue
        arrays[name], volume_affine = read_volume(files[name])
        if affine is None:
            affine = volume_affine
        elif arrays[name].shape != arrays["mr"].shape:
            raise MedicalInputError(f"{files[name]} has shape {arrays[name].shape}, not the MR's {arrays['mr'].shape}.")
    body = arrays["mask"] > 0 if "mask" in arrays else np.ones(arrays["mr"].shape, bool)
    mr_top = float(np.percentile(arrays["mr"][body], 99.5)) if body.any() else float(arrays["mr"].max())
    views = [VolumeView("MR", page_volume(arrays["mr"], affine, "intensity", "MR"), "gray", (0.0, mr_top),
                        is_synthetic(files["mr"])),
             VolumeView("synthetic CT (HU)", page_volume(arrays["sct"], affine, "hu", "SYNTHETIC CT"), "gray", CT_WINDOW_HU)]
    if "ct" in arrays:
        error = np.abs(arrays["sct"] - arrays["ct"]) * body
        views += [VolumeView("CT (HU)", page_volume(arrays["ct"], affine, "hu", "CT"), "gray", CT_WINDOW_HU,
                             is_synthetic(files["ct"])),
                  VolumeView("|sCT - CT| (HU)", page_volume(error, affine, "hu", "SYNTHETIC |sCT - CT|"), "magma",
                             (0.0, ERROR_MAX_HU))]
    if "std" in arrays:
        std = arrays["std"]
        top = max(float(np.percentile(std[std > 0], 99)) if (std > 0).any() else 1.0, 1.0)
        views.append(VolumeView("uncertainty: std over samples (HU)",
                                page_volume(std, affine, "intensity", "SYNTHETIC std (HU)"), "viridis", (0.0, top)))
    return views, arrays


def write_translation_report(sct: Path, out: Path, mr=None, ct=None, mask=None, std=None) -> str:
    """The page of one ``translate`` output (the files not given are found from its sidecar, ``locate_translation``)."""
    run = locate_translation(Path(sct), mr, ct, mask, std)
    files = {"mr": run.mr, "sct": run.sct, "ct": run.ct, "mask": run.mask, "std": run.std}
    views, arrays = translation_views(files)
    page = ReportPage(f"Synthetic CT: {run.sct}", SYNTHETIC_NOTICE, subtitle=f"translated from {run.mr}")
    facts = [(k, run.sidecar[k]) for k in TRANSLATION_FACTS if run.sidecar.get(k) not in (None, "")]
    page.add_section("Run", html_table(("", "value"), facts))
    if "ct" in arrays:
        body = arrays["mask"] > 0 if "mask" in arrays else arrays["ct"] > -500
        scores = score_patient(arrays["sct"], arrays["ct"], body)
        page.add_section("Against the CT (SynthRAD2023 metrics, in the body mask)", html_table(
            ("MAE (HU)", "PSNR (dB)", "SSIM"), [(f"{scores['mae']:.1f}", f"{scores['psnr']:.2f}", f"{scores['ssim']:.4f}")],
            caption=f"against {run.ct}"))
    added = add_volume_viewer(page, views)
    size = page.write(out)
    return f"Wrote {out}: {len(views)} linked views ({added / 1e6:.1f} MB of volumes), {size / 1e6:.2f} MB, opens offline."


def metrics_table(record: dict) -> str:
    """Every patient's SynthRAD metrics (and the uncertainty's, where there is one) with their mean."""
    columns = [c for c in METRIC_COLUMNS if c[0] in record.get("mean", {})]

    def row(label: str, values: dict) -> list[str]:
        flat = {**values, **{f"tissue_mae.{k}": v for k, v in values.get("tissue_mae", {}).items()}}
        return [label, *["-" if flat.get(key) is None else f"{flat[key]:.{digits}f}" for key, _, digits in columns]]

    rows = [row(pid, m) for pid, m in sorted(record["patients"].items())]
    rows.append(row(f"mean of {record['n_patients']}", record["mean"]))
    return html_table(("patient", *[label for _, label, _ in columns]), rows, caption=record.get("protocol"),
                      highlight=[len(rows) - 1])


def reliability_html(record: dict, metrics_path: Path) -> str:
    """The reliability diagram: the PNG that ``evaluate mri2ct --png`` drew, or drawn here from the report's curve."""
    png = find_recorded_path(record.get("reliability_png"), metrics_path.parent)
    with tempfile.TemporaryDirectory() as folder:
        if png is None:
            png = reliability_diagram({f"{len(record['patients'])} patients": record["reliability_curve"]},
                                      Path(folder) / "reliability.png")
        image = png_data_uri(png)
    return (f'<figure><img src="{image}" alt="reliability diagram" style="max-width: 420px"><figcaption>RMS error '
            "against the predicted std in equal-count bins of every voxel in the body masks; a calibrated uncertainty "
            "lies on the diagonal.</figcaption></figure>")


def write_evaluation_report(metrics_path: Path, out: Path) -> str:
    """The page of ``evaluate mri2ct``'s metrics, with the views of the patient with the largest MAE."""
    record = evaluation_record(metrics_path)
    pid, files = worst_patient(record, metrics_path)
    views, _ = translation_views(files)
    page = ReportPage(f"Synthetic CTs scored: {metrics_path.name}", SYNTHETIC_NOTICE,
                      subtitle=f"{record['n_patients']} patients: predictions {record['pred_dir']}, references "
                               f"{record['ref_dir']}")
    page.add_section("Metrics", metrics_table(record))
    if "reliability_curve" in record:
        page.add_section("Calibration of the uncertainty", reliability_html(record, metrics_path))
    added = add_volume_viewer(page, views, note=f"Patient {pid}, the largest MAE of the {record['n_patients']}.")
    size = page.write(out)
    return f"Wrote {out}: {record['n_patients']} patients, the views of {pid} ({added / 1e6:.1f} MB), {size / 1e6:.2f} MB."


def fidelity_table(pairs: list[dict], tissue_names: dict[int, str]) -> str:
    """Per tissue, each subject's median CT [quartiles] against the phantoms' range for that tissue."""
    cells: dict[str, dict[str, str]] = {}
    reference: dict[str, str] = {}
    for pair in pairs[:FIDELITY_SUBJECTS]:
        (ct, _), (mr, _), (labels, _) = (read_volume(pair[k]) for k in ("ct", "mr", "labels"))
        for row in tissue_fidelity(ct, mr, labels, tissue_names):
            off = row["outside_hu"]
            mark = "" if off is None else " \u2713" if abs(off) <= FIDELITY_TOLERANCE_HU else f" \u2717 {off:+.0f}"
            cells.setdefault(row["tissue"], {})[pair["id"]] = (f"{row['ct_median']:.0f} [{row['ct_p25']:.0f}, "
                                                               f"{row['ct_p75']:.0f}]{mark}")
            low_high = row["reference_hu"]
            reference[row["tissue"]] = "-" if low_high is None else f"{low_high[0]:.0f} .. {low_high[1]:.0f}"
    ids = [p["id"] for p in pairs[:FIDELITY_SUBJECTS]]
    rows = [(tissue, reference[tissue], *[by_subject.get(i, "") for i in ids]) for tissue, by_subject in cells.items()]
    shown = "" if len(pairs) <= FIDELITY_SUBJECTS else f" (the first {FIDELITY_SUBJECTS} of {len(pairs)} subjects)"
    return html_table(("tissue", "phantoms' HU", *ids), rows, caption="CT median [25th, 75th percentile] in HU per "
                      f"tissue label; \u2713 the median lies within {FIDELITY_TOLERANCE_HU:.0f} HU of the range of the "
                      "phantoms the generator learnt from (partial volume and noise move a real phantom's medians that "
                      f"far), \u2717 and by how much it lies outside{shown}")


def write_dataset_report(folder: Path, out: Path) -> str:
    """The page of a synthetic (or phantom) data set folder."""
    record = dataset_record(folder)
    if record is None:
        raise MedicalInputError(f"{folder} has no dataset.json of synthesize medical or phantom.")
    pairs = [p for p in find_synthrad_pairs(folder, require=("mr", "ct", "mask")) if "labels" in p]
    if not pairs:
        raise MedicalInputError(f"{folder} holds no subject with mr, ct, mask and labels volumes.")
    names = {int(k): v for k, v in record["tissue_labels"].items()}
    page = ReportPage(f"Synthetic data set: {folder.name}", SYNTHETIC_NOTICE,
                      subtitle=f"{len(pairs)} subjects, {record.get('notice', record.get('generator', ''))}")
    facts = [(k, record[k]) for k in ("generator", "checkpoint", "sampler", "steps", "seed", "scanner", "spacing_mm",
                                      "generated_shape", "date") if record.get(k) not in (None, "")]
    page.add_section("Provenance", html_table(("", "value"), facts))
    sheet = folder / "contact_sheet.png"
    if sheet.is_file():
        page.add_section("Contact sheet", f'<figure><img src="{png_data_uri(sheet)}" alt="contact sheet"></figure>')
    page.add_section("Per-tissue fidelity of the CT", fidelity_table(pairs, names))
    first = pairs[0]
    arrays = {k: read_volume(first[k]) for k in ("mr", "ct", "labels")}
    mr, affine = arrays["mr"]
    views = [VolumeView(f"{first['id']} MR", page_volume(mr, affine, "intensity", "SYNTHETIC MR"), "gray",
                        (0.0, float(np.percentile(mr[mr > 0], 99.5)) if (mr > 0).any() else 1.0)),
             VolumeView(f"{first['id']} CT (HU)", page_volume(arrays["ct"][0], affine, "hu", "SYNTHETIC CT"), "gray",
                        CT_WINDOW_HU),
             VolumeView(f"{first['id']} tissue labels", page_volume(arrays["labels"][0], affine, "label", "SYNTHETIC labels"),
                        "turbo", (0.0, float(max(names))))]
    added = add_volume_viewer(page, views, note="Labels: " + ", ".join(f"{k} {v}" for k, v in sorted(names.items())) + ".")
    size = page.write(out)
    return f"Wrote {out}: {len(pairs)} subjects, the views of {first['id']} ({added / 1e6:.1f} MB), {size / 1e6:.2f} MB."
