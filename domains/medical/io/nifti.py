"""NIfTI reading and writing through nibabel, with atomic writes and SYNTHETIC labelling.

Every image this package writes says SYNTHETIC in its header description, keeps the
geometry (affine, qform/sform and their codes, pixdim, units) of the image it was derived
from, and appears on disk only once complete (temporary file in the same folder, then
`os.replace`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from sci_diffusion.atomic import atomic_path, write_json
from sci_diffusion.errors import UserError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
DESCRIP_BYTES = 80  # size of the NIfTI-1 `descrip` field


class MedicalInputError(UserError):
    """Bad medical input; the message is one sentence that names the file and the problem.

    A ``UserError`` (hence a ``ValueError``), so the CLI prints it as one line and exits with status 2.
    """


def nifti_stem(path: str | os.PathLike) -> str:
    """File name without `.nii.gz` / `.nii`: `a/1BA001.nii.gz` -> `1BA001`."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_nifti(path: str | os.PathLike) -> nib.Nifti1Image | nib.Nifti2Image:
    """Open a NIfTI-1/2 image lazily (header only); MedicalInputError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise MedicalInputError(f"{path} does not exist or is not a file.")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises ImageFileError, gzip/zlib/EOF errors, ...
        raise MedicalInputError(f"{path} is not a readable NIfTI file ({type(err).__name__}: {err}).") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise MedicalInputError(f"{path} is a {type(img).__name__}, not a NIfTI image.")
    return img


def load_volume(path: str | os.PathLike, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Read a NIfTI volume.

    Args:
        path: a `.nii` or `.nii.gz` file.
        dtype: floating dtype of the returned array (scl_slope/scl_inter applied).

    Returns:
        array: the voxel data, shape as stored (X, Y, Z[, ...]), in the file's units (HU for CT).
        affine: (4, 4) float64 voxel-to-world matrix (mm, RAS+), nibabel's best affine.
        header: the image's header (a copy), for `save_like` or inspection.

    Raises:
        MedicalInputError: the file is missing, not a NIfTI, or its data cannot be read.
    """
    img = load_nifti(path)
    try:
        array = img.get_fdata(dtype=dtype)
    except Exception as err:  # truncated gzip streams fail only when the data is read
        raise MedicalInputError(f"{path} has a NIfTI header but its voxel data cannot be read "
                                f"({type(err).__name__}: {err}).") from None
    return array, np.asarray(img.affine, dtype=np.float64), img.header.copy()


def synthetic_description(description: str) -> bytes:
    """Header description, ASCII: "SYNTHETIC " prepended when missing, cut to the 80 bytes of NIfTI's `descrip`."""
    text = description if "SYNTHETIC" in description else f"SYNTHETIC {description}"
    data = text.encode("ascii", errors="replace")
    return data[:DESCRIP_BYTES]


def sidecar_path(nifti_path: str | os.PathLike) -> Path:
    """`out.nii.gz` -> `out.json` in the same folder."""
    path = Path(nifti_path)
    return path.with_name(nifti_stem(path) + ".json")


def _write_image(img: nib.Nifti1Image, out_path: Path, sidecar: dict | None) -> Path:
    if not out_path.name.endswith(NIFTI_SUFFIXES):
        raise MedicalInputError(f"{out_path} must end in .nii.gz or .nii to be written as NIfTI.")
    suffix = ".nii.gz" if out_path.name.endswith(".nii.gz") else out_path.suffix
    with atomic_path(out_path, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
    if sidecar is not None:
        write_json(sidecar_path(out_path), {"synthetic": True, **sidecar})
    return out_path


def save_like(
    array: np.ndarray,
    reference: str | os.PathLike | nib.Nifti1Image,
    out_path: str | os.PathLike,
    description: str = "SYNTHETIC image from sci-diffusion",
    sidecar: dict | None = None,
) -> Path:
    """Write `array` with the geometry and header of a reference image.

    The reference's header is copied (pixdim, xyzt units, intent, ...), and its qform and
    sform are set back with their own codes, so the file lines up with the reference in any
    viewer. The data type on disk is the array's; scaling and display range are reset.

    Args:
        array: (X, Y, Z[, ...]) data whose first three axes match the reference grid.
        reference: path of a NIfTI file, or a loaded nibabel NIfTI image.
        out_path: target `.nii.gz` or `.nii`; folders are created.
        description: header `descrip`; "SYNTHETIC " is prepended when missing, then it is cut
            to 80 bytes.
        sidecar: when given, written as `<out>.json` beside the image, with "synthetic": true.

    Returns:
        The path written.
    """
    ref = load_nifti(reference) if isinstance(reference, (str, os.PathLike)) else reference
    array = np.asanyarray(array)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    ref_shape = tuple(ref.shape[:3])
    if tuple(array.shape[:3]) != ref_shape:
        name = reference if isinstance(reference, (str, os.PathLike)) else ref.get_filename() or "the reference image"
        raise MedicalInputError(f"Array of shape {array.shape} does not fit the grid {ref_shape} of {name}.")
    header = ref.header.copy()
    header.set_data_dtype(array.dtype)
    img = nib.Nifti1Image(array, ref.affine, header=header)
    qform, qcode = ref.header.get_qform(coded=True)
    sform, scode = ref.header.get_sform(coded=True)
    img.set_qform(qform if qform is not None else ref.header.get_qform(), code=int(qcode or 0))
    img.set_sform(sform if sform is not None else ref.header.get_sform(), code=int(scode or 0))
    img.header.set_slope_inter(np.nan, np.nan)
    img.header["cal_min"] = 0
    img.header["cal_max"] = 0
    img.header["descrip"] = synthetic_description(description)
    return _write_image(img, Path(out_path), sidecar)


def save_volume(
    array: np.ndarray,
    affine: np.ndarray,
    out_path: str | os.PathLike,
    description: str = "SYNTHETIC image from sci-diffusion",
    sidecar: dict | None = None,
) -> Path:
    """Write a new NIfTI-1 volume with qform and sform both set to `affine` (code 1, scanner).

    Args:
        array: (X, Y, Z[, ...]) data; float64 is stored as float32, bool as uint8.
        affine: (4, 4) voxel-to-world matrix in mm (RAS+).
        out_path, description, sidecar: as in `save_like`.
    """
    array = np.asanyarray(array)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units(xyz="mm", t="sec")
    img.header["descrip"] = synthetic_description(description)
    return _write_image(img, Path(out_path), sidecar)
