"""A subject placed in a cube centred on its body, shifted by whole voxels.

Shared by the memorisation audit (``audit.load_subject``) and the diversity measure (``diversity.centred_cube``):
a whole-voxel shift interpolates nothing, so a copied subject, or a copied slice, stays identical in the cube.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

BACKGROUND_HU = -1000.0  # what fills the cube outside the field of view


def body_centring(body: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(offset (3,) int voxels, centroid (3,) float voxels)``: the whole-voxel shift that brings the centroid of
    ``body`` (X, Y, Z) bool to the centre of an (n, n, n) cube, and that centroid in the input's voxels."""
    centroid = np.asarray(ndimage.center_of_mass(np.asarray(body, dtype=np.float32)))
    return np.round((n - 1) / 2 - centroid).astype(int), centroid


def place_in_cube(volume: np.ndarray, offset: np.ndarray, n: int, fill: float) -> np.ndarray:
    """``volume`` (X, Y, Z) shifted by ``offset`` voxels into an (n, n, n) cube (nearest neighbour, so values are
    copied, not interpolated), ``fill`` where the volume does not reach; what falls outside the cube is left out."""
    return ndimage.affine_transform(volume, np.eye(3), offset=-np.asarray(offset), output_shape=(n, n, n), order=0,
                                    cval=fill)
