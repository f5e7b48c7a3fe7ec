"""Finding and checking paired MR/CT/mask volumes (SynthRAD2023 and SynthRAD2025 Task 1 layouts).

A pair is a dict {"id": str, "mr": path, "ct": path, "mask": path} (plus "labels" for
phantoms). `validate_pair` turns every way a pair can be unusable into one
MedicalInputError sentence that names the file and the problem.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..io.images import IMAGE_SUFFIXES, image_stem, read_volume
from ..io.masks import MASK_THRESHOLD, binary_mask
from ..io.nifti import MedicalInputError

SYNTHRAD_KEYS = ("mr", "ct", "mask")
OPTIONAL_KEYS = ("labels", "structures")  # phantoms: tissue labels; phantom v2: named structures
AFFINE_ATOL_MM = 1e-3


def _image_in(folder: Path, name: str) -> Path | None:
    found = [folder / f"{name}{s}" for s in IMAGE_SUFFIXES if (folder / f"{name}{s}").is_file()]
    if len(found) > 1:
        raise MedicalInputError(f"Patient folder {folder} holds {' and '.join(p.name for p in found)}; keep one.")
    return found[0] if found else None


def find_synthrad_pairs(root: str | os.PathLike, require: Sequence[str] = SYNTHRAD_KEYS) -> list[dict[str, str]]:
    """Patients under `root`: `<patient>/{mr,ct,mask}.nii.gz` (SynthRAD2023 Task 1) or `.mha` (SynthRAD2025).

    Any folder at any depth that holds one of mr/ct/mask (`.nii.gz`, `.nii`, `.mha`, `.mhd` or `.nrrd`;
    each patient may mix them, see ``images.IMAGE_SUFFIXES``) is a patient,
    named by the folder, so `root` may be `Task1/brain`, `Task1`, or one patient's folder.
    Other files and folders are ignored. A `labels` volume is listed when present.

    Args:
        root: folder to search.
        require: files every patient must have; ("ct", "mask") for evaluation,
            ("mr", "mask") for inference.

    Returns:
        Dicts {"id", "mr", "ct", "mask"[, "labels"]} (paths as str, the keys in `require` and
        any other present), sorted by path.

    Raises:
        MedicalInputError: root is not a folder, holds no patient, a patient lacks a required
            file, or two patient folders share an id.
    """
    root = Path(root)
    if not root.is_dir():
        raise MedicalInputError(f"{root} is not a folder of SynthRAD patients.")
    pairs: list[dict[str, str]] = []
    seen: dict[str, Path] = {}
    for folder, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        folder = Path(folder)
        found = {k: _image_in(folder, k) for k in (*SYNTHRAD_KEYS, *OPTIONAL_KEYS)}
        if not any(found[k] for k in SYNTHRAD_KEYS):
            continue
        for key in require:
            if found[key] is None:
                raise MedicalInputError(f"Patient folder {folder} has no {key}.nii.gz or {key}.mha.")
        pid = folder.name
        if pid in seen:
            raise MedicalInputError(f"Patient id {pid} appears twice, in {seen[pid]} and {folder}.")
        seen[pid] = folder
        pairs.append({"id": pid, **{k: str(p) for k, p in found.items() if p is not None}})
    if not pairs:
        raise MedicalInputError(f"{root} holds no SynthRAD patient folder (<id>/mr, ct, mask as .nii.gz or .mha).")
    return pairs


def pairs_from_triplets(triplets: Iterable[Sequence[str | os.PathLike]]) -> list[dict[str, str]]:
    """Pairs from explicit (mr, ct, mask) or (mr, ct, mask, id) paths, for any folder layout.

    Without an id, a file named `mr.nii.gz` (or `mr.mha`) is named by its folder, any other by its stem.
    """
    pairs = []
    for item in triplets:
        if len(item) not in (3, 4):
            raise ValueError(f"Expected (mr, ct, mask) or (mr, ct, mask, id), got {item!r}.")
        mr, ct, mask = (str(p) for p in item[:3])
        pid = str(item[3]) if len(item) == 4 else (Path(mr).parent.name if image_stem(mr) == "mr" else image_stem(mr))
        pairs.append({"id": pid, "mr": mr, "ct": ct, "mask": mask})
    return pairs


def validate_pair(pair: dict[str, str]) -> dict[str, object]:
    """Check that a pair's volumes can be used together.

    Checks, in order: each file reads as a 3-D volume without NaN or infinite voxels
    (``images.read_volume``: NIfTI, MetaImage, NRRD or a DICOM folder) and has the shape and
    affine (np.allclose, atol 1e-3 mm) of the first volume; the mask has a voxel > 0.5. Volumes in the
    pair among mr, ct, mask, labels are checked; "mr" and "mask" are required, "ct" is optional
    (inference).

    Returns:
        {"id", "shape": (X, Y, Z), "spacing_mm": (sx, sy, sz)} of the pair.

    Raises:
        MedicalInputError: one sentence naming the offending file and the problem.
    """
    for key in ("mr", "mask"):
        if key not in pair:
            raise MedicalInputError(f"Pair {pair.get('id', '?')} has no {key} volume.")
    keys = [k for k in (*SYNTHRAD_KEYS, *OPTIONAL_KEYS) if k in pair]
    volumes = {k: read_volume(pair[k]) for k in keys}
    ref_path = pair[keys[0]]
    ref_array, ref_affine = volumes[keys[0]]
    for key in keys:
        (array, affine), path = volumes[key], pair[key]
        if array.shape != ref_array.shape:
            raise MedicalInputError(f"{path} has shape {array.shape} but {ref_path} has shape {ref_array.shape}.")
        if not np.allclose(affine, ref_affine, atol=AFFINE_ATOL_MM):
            worst = float(np.abs(affine - ref_affine).max())
            raise MedicalInputError(f"{path} and {ref_path} have different affines (largest difference {worst:.3g}).")
        if key == "mask" and not binary_mask(array).any():
            raise MedicalInputError(f"{path} is an empty mask (no voxel > {MASK_THRESHOLD:g}).")
    return {"id": pair.get("id", Path(pair["mr"]).parent.name), "shape": tuple(ref_array.shape),
            "spacing_mm": tuple(float(z) for z in np.sqrt((ref_affine[:3, :3] ** 2).sum(axis=0)))}
