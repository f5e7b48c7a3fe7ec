"""Reading what ``translate`` translates: the MR (and body mask, reference CT) on the model's RAS grid,
with the body mask derived from the MR when none is given."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np

from ..data.phantom import body_mask_from_mr
from ..io.images import load_for_model, to_input_grid
from ..io.masks import MASK_THRESHOLD, binary_mask
from ..io.nifti import MedicalInputError

DERIVED_MASK = "derived from the MR (Otsu threshold, closing, dilation, hole filling; SynthRAD2023)"


def ras_orientation(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(to_ras, from_ras)``: nibabel orientation transforms between a volume's voxel axes and RAS."""
    start = nib.orientations.io_orientation(affine)
    ras = nib.orientations.axcodes2ornt("RAS")
    return nib.orientations.ornt_transform(start, ras), nib.orientations.ornt_transform(ras, start)


def ras_zooms(affine: np.ndarray, to_ras: np.ndarray) -> np.ndarray:
    """Voxel size (mm) along the R, A, S axes of the reoriented volume."""
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    out = np.zeros(3)
    for axis, (new_axis, _) in enumerate(to_ras):
        out[int(new_axis)] = zooms[axis]
    return out


def load_inputs(mr_path: str | os.PathLike, mask_path: str | os.PathLike | None = None,
                ct_path: str | os.PathLike | None = None,
                voxel_mm: Sequence[float] | float | None = None, series: str | None = None) -> dict[str, Any]:
    """Read and check the MR (and mask, CT), bring them onto the model's RAS grid, and derive the body
    mask from the MR when none is given (``images.load_for_model``).

    Args:
        mr_path, mask_path, ct_path: NIfTI, MetaImage (.mha, .mhd) or NRRD files, or DICOM series
            folders; the mask and CT on the MR's grid (shape and affine).
        voxel_mm: resample to this voxel size (mm; the model's training voxels); None keeps the MR's.
        series: the DICOM series of an MR folder that holds several (``images.pick_dicom_series``).

    Returns:
        {"mr", "mask" (bool), "ct" (or None): (X, Y, Z) arrays on the model's grid in RAS voxel order;
        "zooms": its voxel size (mm); "input_zooms": the MR's voxel size along R, A, S (mm);
        "input_mask": the body mask on the MR's own grid (bool, the MR file's shape); "loaded": the
        ``images.LoadedVolumes`` (for ``to_input_grid`` and ``save_on_input_grid``); "mask_source": the
        mask's path or how it was derived; "to_ras", "from_ras": nibabel orientation transforms of the MR,
        and "mr_image": its nibabel image (None unless NIfTI), which lead back to the MR's grid only
        when ``voxel_mm`` is None}.
    """
    loaded = load_for_model({"mr": mr_path, "mask": mask_path, "ct": ct_path}, voxel_mm, series={"mr": series})
    mr = loaded.arrays["mr"]
    if mask_path is not None:
        input_mask = binary_mask(loaded.inputs["mask"])
        mask = binary_mask(loaded.arrays["mask"])
        if not input_mask.any():
            raise MedicalInputError(f"{mask_path} is an empty mask (no voxel > {MASK_THRESHOLD:g}).")
        if not mask.any():
            raise MedicalInputError(f"{mask_path} keeps no voxel at the model's {np.round(loaded.zooms, 2).tolist()} mm "
                                    "voxels; the body is smaller than one voxel.")
        source = str(mask_path)
    else:
        try:
            mask = body_mask_from_mr(mr, loaded.zooms)
        except ValueError as err:  # Otsu on a constant image
            raise MedicalInputError(f"No body mask could be derived from {mr_path} ({err}); pass --mask.") from None
        if not mask.any():
            raise MedicalInputError(f"No body mask could be derived from {mr_path}; pass --mask.")
        input_mask = binary_mask(to_input_grid(mask.astype(np.float32), loaded, nearest=True))
        source = DERIVED_MASK
    to_ras, from_ras = ras_orientation(loaded.input_affine)
    return {"mr": mr, "mask": mask, "ct": loaded.arrays.get("ct"), "zooms": loaded.zooms,
            "input_zooms": ras_zooms(loaded.input_affine, to_ras), "input_mask": input_mask, "loaded": loaded,
            "mask_source": source, "to_ras": to_ras, "from_ras": from_ras, "mr_image": loaded.nifti}
