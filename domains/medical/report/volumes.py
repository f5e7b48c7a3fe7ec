"""Volumes as a report page carries them: small .nii.gz files, downsampled past a voxel budget and stored in
the narrowest type that keeps what a reader looks at.

- HU volumes (CT, synthetic CT, error) as int16, 1 HU steps (exact for a scanner's integer CT);
- other intensities (MR, the uncertainty) as uint8 with NIfTI's ``scl_slope``, so the viewer still reads the
  value in the volume's units, to 1/255 of its maximum;
- labels as uint8.

A 2 mm head (96 x 112 x 96 voxels) stays at full resolution: MR, synthetic CT, CT, error and uncertainty come
to about 2.3 MB of gzip (3.1 MB in base64). A volume past ``VOXEL_BUDGET`` voxels is averaged over blocks of
f x f x f voxels (labels: one voxel of each block), f the smallest that brings it under.
"""
from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from typing import Literal

import nibabel as nib
import numpy as np
from skimage.measure import block_reduce

VOXEL_BUDGET = 2_500_000  # per volume; a 1 mm head (about 9 M voxels) is halved, a 2 mm head kept as it is
Kind = Literal["hu", "intensity", "label"]


@dataclass
class PageVolume:
    """One volume as the page holds it.

    Attributes:
        data: the .nii.gz file's bytes.
        factor: the downsampling factor per axis (1: full resolution).
        shape: its shape on the page, (X, Y, Z).
    """

    data: bytes
    factor: int
    shape: tuple[int, ...]


def downsampling_factor(shape: tuple[int, ...], budget: int = VOXEL_BUDGET) -> int:
    """The smallest integer f with ``prod(ceil(shape / f)) <= budget``."""
    factor = 1
    while math.prod(math.ceil(n / factor) for n in shape) > budget:
        factor += 1
    return factor


def downsample(array: np.ndarray, affine: np.ndarray, factor: int, kind: Kind) -> tuple[np.ndarray, np.ndarray]:
    """``array`` (X, Y, Z) over blocks of ``factor`` voxels per axis, and its affine (4, 4): block means whose
    centre moves by (f - 1) / 2 voxels, or for labels the first voxel of each block, which does not move."""
    if factor == 1:
        return array, affine
    scale = np.diag([factor, factor, factor, 1.0])
    if kind == "label":
        return array[::factor, ::factor, ::factor], affine @ scale
    scale[:3, 3] = (factor - 1) / 2.0
    reduced = block_reduce(array.astype(np.float32), (factor, factor, factor), np.mean, cval=float(array.min()))
    return reduced, affine @ scale


def page_volume(array: np.ndarray, affine: np.ndarray, kind: Kind, description: str,
                budget: int = VOXEL_BUDGET) -> PageVolume:
    """A volume (X, Y, Z), in its units (HU for ``hu``), as a small .nii.gz (see the module docstring).

    Args:
        affine: (4, 4) voxel to world, mm RAS+.
        description: the NIfTI description (80 ASCII bytes at most), e.g. SYNTHETIC and what it is.
    """
    factor = downsampling_factor(array.shape, budget)
    array, affine = downsample(np.asarray(array), np.asarray(affine, dtype=np.float64), factor, kind)
    if kind == "hu":
        image = nib.Nifti1Image(np.clip(np.round(array), -32768, 32767).astype(np.int16), affine)
    elif kind == "label":
        image = nib.Nifti1Image(np.clip(array, 0, 255).astype(np.uint8), affine)
    else:
        low, high = float(np.min(array)), float(np.max(array))
        slope = (high - low) / 255.0 if high > low else 1.0
        image = nib.Nifti1Image(np.round((array - low) / slope).astype(np.uint8), affine)
        image.header.set_slope_inter(slope, low)
    image.header["descrip"] = description.encode("ascii", "replace")[:79]
    image.header.set_xyzt_units("mm")
    return PageVolume(gzip.compress(image.to_bytes(), compresslevel=6, mtime=0), factor, tuple(array.shape))
