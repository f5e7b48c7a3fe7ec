"""Which medical run a path is the output of, and its files.

- a synthetic CT written by ``translate`` (``sct.nii.gz``, or .nii / .mha, with its JSON sidecar naming the MR);
- the metrics JSON of ``evaluate mri2ct`` (naming its prediction and reference folders);
- a data set folder of ``synthesize medical`` or ``phantom`` (with ``dataset.json``).

The sidecars record paths relative to the folder the run started in; they are looked for there, and under the
folders above the output (``run_files.find_recorded_path``). A CT that translate was not told of is looked
for beside the MR, as SynthRAD lays them out (``<id>/mr.nii.gz``, ``<id>/ct.nii.gz``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sci_diffusion.report.run_files import find_recorded_path, read_small_json

from ..data.pairs import find_synthrad_pairs
from ..evaluation.directory import find_prediction
from ..io.images import OUTPUT_SUFFIXES, image_stem
from ..io.nifti import MedicalInputError


@dataclass
class Translation:
    """The files of one ``translate`` run (None: not given and not found)."""

    sct: Path
    sidecar: dict
    mr: Path | None
    mask: Path | None
    ct: Path | None
    std: Path | None


def sidecar_of(path: Path) -> dict | None:
    """The JSON sidecar of a volume written by sci-diffusion (``sct.nii.gz`` -> ``sct.json``), or None."""
    return read_small_json(path.with_name(image_stem(path) + ".json"))


def dataset_record(path: Path) -> dict | None:
    """A data set folder's ``dataset.json`` (synthesize medical, phantom), or None."""
    record = read_small_json(path / "dataset.json") if path.is_dir() else None
    return record if record and "subjects" in record and "tissue_labels" in record else None


def evaluation_record(path: Path) -> dict | None:
    """``evaluate mri2ct``'s metrics JSON, or None."""
    record = read_small_json(path) if path.suffix.lower() == ".json" else None
    return record if record and {"pred_dir", "ref_dir", "patients"} <= set(record) else None


def recognises(path: Path) -> bool:
    """Whether ``path`` is a medical run output (see the module docstring)."""
    if path.is_dir():
        return dataset_record(path) is not None
    if path.name.lower().endswith(OUTPUT_SUFFIXES):
        sidecar = sidecar_of(path)
        return bool(sidecar) and "mr" in sidecar
    return evaluation_record(path) is not None


def locate_translation(sct: Path, mr=None, ct=None, mask=None, std=None) -> Translation:
    """A translate run's files: those given, else those its sidecar names, else (the CT) the one beside the MR.

    Raises:
        MedicalInputError: the synthetic CT has no sidecar, or its MR is nowhere to be found.
    """
    sidecar = sidecar_of(sct)
    if sidecar is None:
        raise MedicalInputError(f"{sct} has no JSON sidecar of translate beside it, so its MR is unknown.")
    near = sct.parent
    mr = Path(mr) if mr else find_recorded_path(sidecar.get("mr"), near)
    if mr is None:
        raise MedicalInputError(f"The MR that {sct} was translated from ({sidecar.get('mr')}) is not there any more.")
    mask = Path(mask) if mask else find_recorded_path(sidecar.get("mask"), near)
    std = Path(std) if std else find_recorded_path(sidecar.get("uncertainty"), near)
    if ct is None and mr.is_file():
        ct = next((c for s in OUTPUT_SUFFIXES if (c := mr.with_name("ct" + s)).is_file()), None)
    return Translation(sct, sidecar, mr, mask, Path(ct) if ct else None, std)


def worst_patient(record: dict, metrics_path: Path) -> tuple[str, dict[str, Path | None]]:
    """The patient of an ``evaluate mri2ct`` report with the largest MAE, and its files: ``mr``, ``ct``, ``mask``
    (the reference folder's), ``sct`` and ``std`` (the prediction folder's; std None without one).

    Raises:
        MedicalInputError: the report's folders or the patient's files are not there.
    """
    near = metrics_path.parent
    folders = {}
    for key in ("pred_dir", "ref_dir"):
        folders[key] = next((f for f in [Path(record[key]), *(a / Path(record[key]).name for a in [near, *near.parents])]
                             if f.is_dir()), None)
        if folders[key] is None:
            raise MedicalInputError(f"{metrics_path} names the folder {record[key]}, which is not there any more.")
    scored = {pid: m for pid, m in record["patients"].items() if m.get("mae") is not None}
    if not scored:
        raise MedicalInputError(f"{metrics_path} holds no scored patient.")
    pid = max(scored, key=lambda p: scored[p]["mae"])
    sct, std = find_prediction(folders["pred_dir"], pid)
    reference = {p["id"]: p for p in find_synthrad_pairs(folders["ref_dir"], require=("ct", "mask"))}.get(pid, {})
    files = {"sct": sct, "std": std, **{name: Path(reference[name]) if name in reference else None
                                        for name in ("mr", "ct", "mask")}}
    missing = [name for name in ("sct", "mr", "ct") if files[name] is None]
    if missing:
        raise MedicalInputError(f"Patient {pid} of {metrics_path} has no {' or '.join(missing)} file under "
                                f"{folders['pred_dir'] if 'sct' in missing else folders['ref_dir']}.")
    return pid, files
