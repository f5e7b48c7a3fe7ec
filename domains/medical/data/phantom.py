"""Paired MR/CT head phantoms in the SynthRAD2023 Task 1 layout.

A subject is a head built from nested, smoothly deformed surfaces in a head frame
(x: left->right, y: posterior->anterior, z: inferior->superior, millimetres), painted
tissue by tissue with partial-volume fractions, then imaged twice:

- CT: the fraction-weighted Hounsfield units plus Gaussian noise; -1000 HU outside the mask.
- T1 MR: the fraction-weighted relative T1 signal (BrainWeb scale), times a smooth bias
  field and a scanner gain, with Rician noise.

Tissue values follow docs/protocols.md §2. Cortical bone and air are both dark on T1
(bone about 48, air about 0 plus the noise floor) while their CT values are 2,500 HU apart:
the ambiguity that makes MR->CT hard. Sinuses are air pockets walled by cortical bone.

Each subject differs in head size and shape, a smooth random deformation, pose
(rotation and translation), layer thicknesses, tissue values, ventricle size, sinus size,
bias field and noise level.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation
from skimage.filters import threshold_otsu

from sci_diffusion.atomic import write_json

from ..io.nifti import save_volume

TISSUE_LABELS: dict[int, str] = {
    0: "air",            # outside the body
    1: "skin",           # skin, scalp, muscle and other soft tissue
    2: "fat",            # subcutaneous fat
    3: "cortical_bone",  # outer and inner tables of the skull, sinus walls, spine cortex
    4: "diploe",         # marrow: skull diploe, maxilla, vertebral bodies, skull base core
    5: "csf",            # subarachnoid CSF, interhemispheric fissure, spinal canal
    6: "ventricle",      # lateral and third ventricles (CSF values)
    7: "grey_matter",    # cortex and deep grey nuclei
    8: "white_matter",
    9: "sinus_air",      # frontal, sphenoid and maxillary sinuses, nasal cavity
}
LABEL = {name: index for index, name in TISSUE_LABELS.items()}

# Per-subject tissue means: CT in HU, drawn uniformly from these ranges (all inside
# docs/protocols.md §2's table), and T1 on BrainWeb's relative scale (+-5% per subject).
# Partial volume pulls the median of thin layers (cortical bone, CSF) towards their
# neighbours, as it does in a real 2 mm CT, hence cortical bone drawn from the upper part.
TISSUE_CT_HU: dict[str, tuple[float, float]] = {
    "air": (-1000.0, -1000.0),
    "skin": (20.0, 45.0),
    "fat": (-90.0, -60.0),
    "cortical_bone": (1400.0, 1800.0),
    "diploe": (350.0, 650.0),
    "csf": (8.0, 16.0),
    "ventricle": (8.0, 16.0),
    "grey_matter": (38.0, 44.0),
    "white_matter": (22.0, 28.0),
    "sinus_air": (-1000.0, -1000.0),
}
TISSUE_T1: dict[str, float] = {
    "air": 0.0,
    "skin": 92.0,
    "fat": 230.0,
    "cortical_bone": 48.0,
    "diploe": 180.0,
    "csf": 48.0,
    "ventricle": 48.0,
    "grey_matter": 106.0,
    "white_matter": 154.0,
    "sinus_air": 0.0,
}

# A second MR scanner, for robustness tests: another T1 sequence (lower grey/white contrast, brighter
# CSF and darker fat, as at another field strength and inversion time), a stronger bias field and
# more noise. CT is unchanged: only the MR "scanner" moves. Relative T1 on the same scale as above.
SHIFTED_TISSUE_T1: dict[str, float] = {
    "air": 0.0,
    "skin": 100.0,
    "fat": 185.0,
    "cortical_bone": 60.0,
    "diploe": 150.0,
    "csf": 70.0,
    "ventricle": 70.0,
    "grey_matter": 118.0,
    "white_matter": 150.0,
    "sinus_air": 0.0,
}


@dataclass(frozen=True)
class Scanner:
    """How a phantom's MR is imaged.

    Attributes:
        t1: relative T1 signal per tissue (BrainWeb scale, WM about 150).
        bias_sd: standard deviation of the log bias field's quadratic coefficients (head frame in 100 mm).
        bias_clip: the log bias field is clipped to +-this (0.3: about +-35 %).
        noise: range of the Rician noise level, as a fraction of white matter's T1.
    """

    t1: dict[str, float]
    bias_sd: float
    bias_clip: float
    noise: tuple[float, float]


SCANNERS: dict[str, Scanner] = {
    "default": Scanner(TISSUE_T1, bias_sd=0.08, bias_clip=0.3, noise=(0.01, 0.03)),
    "shifted": Scanner(SHIFTED_TISSUE_T1, bias_sd=0.16, bias_clip=0.5, noise=(0.03, 0.06)),
}

FIELD_OF_VIEW_MM = (192.0, 224.0, 192.0)  # left-right, posterior-anterior, inferior-superior
CT_MIN_HU, CT_MAX_HU = -1024.0, 3071.0  # what a 12-bit CT scanner stores
CT_BACKGROUND_HU = -1000.0  # SynthRAD sets the CT outside the mask to this


def _ellipsoid_distance(q: Sequence[np.ndarray], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) to an axis-aligned ellipsoid.

    First-order estimate (r - 1) / |grad r| with r the normalised radius: exact on a sphere
    and within a few percent near the surface of the mildly eccentric shapes used here.
    """
    u = [(qi - ci) / ai for qi, ci, ai in zip(q, centre, radii)]
    r = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)
    g = np.sqrt((u[0] / radii[0]) ** 2 + (u[1] / radii[1]) ** 2 + (u[2] / radii[2]) ** 2)
    out = np.full_like(r, -min(radii))
    np.divide((r - 1.0) * r, g, out=out, where=g > 1e-9)
    return out


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma_vox: float) -> np.ndarray:
    """Gaussian random field of unit standard deviation, correlation length ~sigma_vox voxels.

    Drawn on a half-resolution grid and upsampled linearly: a quarter of the filtering cost.
    """
    small = tuple(max(4, (n + 1) // 2) for n in shape)
    field = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), sigma_vox / 2.0, mode="wrap")
    field = ndimage.zoom(field, [n / m for n, m in zip(shape, small)], order=1, grid_mode=True, mode="grid-wrap")
    field -= field.mean()
    field /= max(float(field.std()), 1e-6)
    return field


class _Canvas:
    """Partial-volume tissue fractions, painted structure after structure like layers of paint."""

    def __init__(self, shape: Sequence[int], voxel_mm: float):
        self.fractions = np.zeros((len(TISSUE_LABELS), *shape), np.float32)
        self.fractions[LABEL["air"]] = 1.0
        self.voxel_mm = voxel_mm

    def occupancy(self, distance: np.ndarray) -> np.ndarray:
        """Fraction of each voxel inside a surface: a one-voxel linear ramp across it."""
        return np.clip(0.5 - distance / self.voxel_mm, 0.0, 1.0).astype(np.float32)

    def paint(self, tissue: str, distance: np.ndarray) -> None:
        """Cover the inside of `distance` < 0 (mm) with `tissue`, fractionally at the boundary."""
        occupancy = self.occupancy(distance)
        inside = occupancy > 0
        if not inside.any():
            return
        # Only touch the box that holds the structure: most structures are small.
        box = _bounding_box(inside)
        occ = occupancy[box]
        view = self.fractions[(slice(None), *box)]
        view *= 1.0 - occ
        view[LABEL[tissue]] += occ


def _bounding_box(inside: np.ndarray) -> tuple[slice, ...]:
    box = []
    for axis in range(inside.ndim):
        other = tuple(a for a in range(inside.ndim) if a != axis)
        hit = np.flatnonzero(inside.any(axis=other))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _spacing3(spacing_mm: float | Sequence[float]) -> np.ndarray:
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,)).copy()
    if np.any(spacing <= 0):
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}.")
    return spacing


def phantom_affine(spacing_mm: float | Sequence[float], shape: Sequence[int],
                   origin_offset_mm: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """RAS+ voxel-to-world affine (4, 4) in mm whose grid centre sits at `origin_offset_mm`."""
    spacing = _spacing3(spacing_mm)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0 * spacing + np.asarray(origin_offset_mm)
    return affine


def body_mask_from_mr(mr: np.ndarray, spacing_mm: float | Sequence[float] = 1.0) -> np.ndarray:
    """Body outline (X, Y, Z) bool from an MR volume, as SynthRAD2023 built its masks.

    Otsu threshold, closing (about 4 mm), dilation (about 2 mm), then hole filling in 3-D
    and in every axial slice, because the neck leaves the field of view open at the bottom.
    The largest connected component is kept.
    """
    spacing = _spacing3(spacing_mm)
    mask = mr > threshold_otsu(mr)

    def ball(radius_mm: float) -> np.ndarray:
        half = np.maximum(np.round(radius_mm / spacing).astype(int), 1)
        grid = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
        return sum((g * s) ** 2 for g, s in zip(grid, spacing)) <= radius_mm**2 + 1e-6

    pad = 3  # room for the closing at the border
    mask = np.pad(mask, pad)
    mask = ndimage.binary_closing(mask, ball(max(4.0, spacing.max())))[pad:-pad, pad:-pad, pad:-pad]
    mask = ndimage.binary_dilation(mask, ball(max(2.0, spacing.max())))
    mask = ndimage.binary_fill_holes(mask)
    for z in range(mask.shape[2]):
        mask[:, :, z] = ndimage.binary_fill_holes(mask[:, :, z])
    components, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        mask = components == int(np.argmax(sizes))
    return mask


@dataclass(frozen=True)
class HeadPose:
    """Where a subject's head lies on its grid, and its size and shape.

    Attributes:
        shape: (X, Y, Z) voxels of the fixed field of view.
        affine: (4, 4) float64 RAS+ voxel-to-world affine in mm (its origin drawn per subject).
        voxel_mm: the mean voxel size (mm), the width of the partial-volume ramps.
        frame: (x, y, z), each (X, Y, Z) float32: every voxel's position in the template head frame
            (mm; x left->right, y posterior->anterior, z inferior->superior), after the head's rotation,
            translation, size and smooth deformation.
    """

    shape: tuple[int, ...]
    affine: np.ndarray
    voxel_mm: float
    frame: tuple[np.ndarray, np.ndarray, np.ndarray]

    def ellipsoid(self, centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
        """Signed distance (mm, negative inside, (X, Y, Z)) to an ellipsoid of the head frame."""
        return _ellipsoid_distance(self.frame, centre, radii)


def draw_head_pose(rng: np.random.Generator, spacing: np.ndarray) -> HeadPose:
    """Draw the grid's origin, the head's rotation, position, size and proportions, and a smooth
    random deformation (a few mm, wavelengths 80-160 mm), in this order of draws from ``rng``."""
    shape = tuple(int(round(f / s)) for f, s in zip(FIELD_OF_VIEW_MM, spacing))
    affine = phantom_affine(spacing, shape, origin_offset_mm=rng.uniform(-20.0, 20.0, 3))
    rotation = Rotation.from_euler("xyz", rng.uniform([-10, -6, -10], [10, 6, 10]), degrees=True).as_matrix()
    grid_centre = affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0) + affine[:3, 3]
    head_centre = grid_centre + np.array([0.0, 0.0, 6.0]) + rng.uniform([-5, -5, -3], [5, 5, 3])
    # phantom_affine is diagonal, so world coordinates separate per axis.
    world = [affine[a, a] * np.arange(n, dtype=np.float32) + (affine[a, 3] - head_centre[a]) for a, n in enumerate(shape)]
    world = [world[0][:, None, None], world[1][None, :, None], world[2][None, None, :]]
    size = rng.uniform(0.93, 1.04) * rng.uniform(0.97, 1.03, 3)  # head size and proportions
    q = [sum(rotation[j, a] * world[j] for j in range(3)) / size[a] for a in range(3)]
    q = [np.ascontiguousarray(np.broadcast_to(qa, shape), dtype=np.float32) for qa in q]
    displacement = [np.zeros(shape, np.float32) for _ in range(3)]
    for a in range(3):  # smooth random deformation, a few mm, wavelengths 80-160 mm
        for _ in range(3):
            direction = rng.normal(size=3)
            wavenumber = direction / np.linalg.norm(direction) * 2 * np.pi / rng.uniform(80.0, 160.0)
            phase = sum(k * qi for k, qi in zip(wavenumber, q)) + rng.uniform(0, 2 * np.pi)
            displacement[a] += np.float32(rng.uniform(0.5, 1.5)) * np.sin(phase)
    x, y, z = (qa + da for qa, da in zip(q, displacement))
    return HeadPose(shape, affine, float(np.mean(spacing)), (x, y, z))


@dataclass(frozen=True)
class HeadAnatomy:
    """One subject's anatomy: layer thicknesses (mm) and the sizes of its structures.

    Attributes:
        t_skin, t_fat, t_outer, t_diploe, t_inner, t_csf, t_grey: thicknesses of the scalp's skin and
            fat, the skull's outer table, diploe and inner table, the subarachnoid CSF and the cortex.
        t_plate: thickness of the skull base.
        folds: (X, Y, Z) float32 Gaussian random field of unit std (~4 mm correlation): the cortical folding.
        fissure_half_width: half width of the interhemispheric fissure.
        ventricle_size, frontal, maxillary: scale factors of the ventricles and of the frontal and
            maxillary sinuses.
    """

    t_skin: float
    t_fat: float
    t_outer: float
    t_diploe: float
    t_inner: float
    t_csf: float
    t_grey: float
    t_plate: float
    folds: np.ndarray
    fissure_half_width: float
    ventricle_size: float
    frontal: float
    maxillary: float


def draw_anatomy(rng: np.random.Generator, pose: HeadPose) -> HeadAnatomy:
    """Draw a subject's anatomy, in the order of the fields of ``HeadAnatomy``."""
    t_skin, t_fat = rng.uniform(2.0, 3.0), rng.uniform(3.5, 5.5)
    t_outer, t_diploe, t_inner = rng.uniform(2.5, 3.5), rng.uniform(3.0, 5.0), rng.uniform(2.5, 3.5)
    t_csf, t_grey = rng.uniform(2.0, 3.5), rng.uniform(4.0, 6.0)
    t_plate = rng.uniform(8.0, 11.0)
    folds = _smooth_noise(rng, pose.shape, sigma_vox=4.0 / pose.voxel_mm)
    fissure_half_width = rng.uniform(1.0, 1.8)
    ventricle_size = rng.uniform(0.7, 1.5)
    frontal = rng.uniform(0.6, 1.3)
    maxillary = rng.uniform(0.85, 1.15)
    return HeadAnatomy(t_skin, t_fat, t_outer, t_diploe, t_inner, t_csf, t_grey, t_plate, folds, fissure_half_width,
                       ventricle_size, frontal, maxillary)


# ----- painting the tissues: deterministic given the pose and the anatomy ------------------------
SKULL_BASE_SLOPE = 0.18  # the skull base rises towards the front


def paint_scalp_and_skull(canvas: _Canvas, pose: HeadPose, anatomy: HeadAnatomy) -> np.ndarray:
    """Skin, fat and muscle over a skull of two cortical tables around the diploe: the cranium smoothly
    joined to the face and neck. Returns the inner skull surface's signed distance (mm)."""
    a = anatomy
    cranium = pose.ellipsoid((0.0, 0.0, 0.0), (78.0, 96.0, 74.0))
    lower_head = pose.ellipsoid((0.0, 8.0, -68.0), (62.0, 78.0, 62.0))
    join = 10.0
    skin_surface = -join * np.logaddexp(-cranium / join, -lower_head / join)
    canvas.paint("skin", skin_surface)
    canvas.paint("fat", skin_surface + a.t_skin)
    canvas.paint("skin", skin_surface + a.t_skin + a.t_fat)  # muscle under the fat
    depth = a.t_skin + a.t_fat
    canvas.paint("cortical_bone", cranium + depth)
    canvas.paint("diploe", cranium + depth + a.t_outer)
    canvas.paint("cortical_bone", cranium + depth + a.t_outer + a.t_diploe)
    return cranium + depth + a.t_outer + a.t_diploe + a.t_inner


def paint_skull_base(canvas: _Canvas, pose: HeadPose, anatomy: HeadAnatomy, inner_skull: np.ndarray) -> np.ndarray:
    """A plate sloping up towards the front closes the brain cavity below. Returns the cavity's signed distance (mm)."""
    _, y, z = pose.frame
    slope = SKULL_BASE_SLOPE
    floor = (-32.0 + slope * y - z) / np.sqrt(1.0 + slope**2)  # > 0 below the cavity floor
    t_plate, t_inner, t_outer = anatomy.t_plate, anatomy.t_inner, anatomy.t_outer
    canvas.paint("skin", inner_skull)  # soft tissue under the skull base (pharynx, muscles)
    canvas.paint("cortical_bone", np.maximum(inner_skull, np.maximum(-floor, floor - t_plate)))
    canvas.paint("diploe", np.maximum(inner_skull, np.maximum(t_inner - floor, floor - t_plate + t_outer)))
    return np.maximum(inner_skull, floor)


def paint_brain(canvas: _Canvas, pose: HeadPose, anatomy: HeadAnatomy, cavity: np.ndarray) -> None:
    """CSF, folded cortex, white matter, deep nuclei, the interhemispheric fissure and the ventricles."""
    x, _, z = pose.frame
    a = anatomy
    pial = cavity + a.t_csf + 2.0 * a.folds
    white = np.maximum(cavity + a.t_csf + a.t_grey + 6.0 * a.folds, pial + 2.0)  # cortex >= 2 mm
    canvas.paint("csf", cavity)
    canvas.paint("grey_matter", pial)
    canvas.paint("white_matter", white)
    for side in (-1.0, 1.0):
        canvas.paint("grey_matter", pose.ellipsoid((side * 17.0, 0.0, 2.0), (8.0, 15.0, 10.0)))
    canvas.paint("csf", np.maximum(np.maximum(np.abs(x) - a.fissure_half_width, 14.0 - z), cavity))
    v = a.ventricle_size
    for side in (-1.0, 1.0):
        canvas.paint("ventricle", pose.ellipsoid((side * 9.0, 0.0, 10.0), (5.0 * v, 26.0, 8.0 * v)))
        canvas.paint("ventricle", pose.ellipsoid((side * 7.0, 22.0, 12.0), (3.0 * v, 8.0, 5.0 * v)))
    canvas.paint("ventricle", pose.ellipsoid((0.0, -4.0, -4.0), (1.5 * v, 10.0, 7.0)))


def paint_sinuses(canvas: _Canvas, pose: HeadPose, anatomy: HeadAnatomy) -> None:
    """Frontal, sphenoid and maxillary sinuses and the nasal cavity: air walled by cortical bone."""
    frontal, maxillary = anatomy.frontal, anatomy.maxillary
    canvas.paint("cortical_bone", pose.ellipsoid((0.0, 80.0, -8.0), (6.0 + 15.0 * frontal, 11.0, 5.0 + 8.0 * frontal)))
    canvas.paint("sinus_air", pose.ellipsoid((0.0, 81.0, -8.0), (15.0 * frontal, 6.0, 8.0 * frontal)))
    sphenoid_z = -32.0 + SKULL_BASE_SLOPE * 22.0 - anatomy.t_plate - 10.0
    canvas.paint("cortical_bone", pose.ellipsoid((0.0, 22.0, sphenoid_z), (14.0, 12.0, 11.0)))
    canvas.paint("sinus_air", pose.ellipsoid((0.0, 22.0, sphenoid_z), (11.0, 9.0, 8.0)))
    canvas.paint("diploe", pose.ellipsoid((0.0, 50.0, -64.0), (34.0, 22.0, 24.0)))
    cavities = [((side * 18.0, 50.0, -63.0), (11.0 * maxillary, 14.0 * maxillary, 15.0 * maxillary)) for side in (-1.0, 1.0)]
    cavities.append(((0.0, 56.0, -58.0), (4.5, 21.0, 16.0)))  # nasal cavity
    for centre, radii in cavities:
        canvas.paint("cortical_bone", pose.ellipsoid(centre, [r + 3.0 for r in radii]))
    for centre, radii in cavities:
        canvas.paint("sinus_air", pose.ellipsoid(centre, radii))


def paint_cervical_spine(canvas: _Canvas, pose: HeadPose, anatomy: HeadAnatomy) -> None:
    """The vertebral column (cortex around marrow) and the spinal canal, below the skull base."""
    x, y, z = pose.frame
    column_top = -32.0 + SKULL_BASE_SLOPE * (-8.0) - anatomy.t_plate - 6.0
    body = np.maximum(np.sqrt(x**2 + (y + 8.0) ** 2) - 11.0, z - column_top)
    canvas.paint("cortical_bone", body)
    canvas.paint("diploe", body + 2.5)
    canal_radius = np.sqrt(x**2 + (y + 28.0) ** 2)
    canvas.paint("cortical_bone", np.maximum(canal_radius - 9.5, z - column_top))
    canvas.paint("csf", np.maximum(canal_radius - 6.0, z - column_top + 3.0))


def tissue_fractions(pose: HeadPose, anatomy: HeadAnatomy) -> np.ndarray:
    """Partial-volume tissue fractions ``(len(TISSUE_LABELS), X, Y, Z)`` float32 of a head, painted outside in."""
    canvas = _Canvas(pose.shape, pose.voxel_mm)
    inner_skull = paint_scalp_and_skull(canvas, pose, anatomy)
    cavity = paint_skull_base(canvas, pose, anatomy, inner_skull)
    paint_brain(canvas, pose, anatomy, cavity)
    paint_sinuses(canvas, pose, anatomy)
    paint_cervical_spine(canvas, pose, anatomy)
    return canvas.fractions


# ----- imaging: CT and MR of the tissue fractions ------------------------------------------------
def tissue_images(rng: np.random.Generator, pose: HeadPose, fractions: np.ndarray,
                  scanner: Scanner) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free ``(ct HU, mr T1)`` (X, Y, Z) float32: each tissue's per-subject mean, with texture within the
    tissue, weighted by its fractions. Draws the two textures, then each tissue's CT and T1 mean in label order."""
    ct_texture = _smooth_noise(rng, pose.shape, sigma_vox=3.0 / pose.voxel_mm)
    mr_texture = _smooth_noise(rng, pose.shape, sigma_vox=3.0 / pose.voxel_mm)
    ct = np.zeros(pose.shape, np.float32)
    mr = np.zeros(pose.shape, np.float32)
    for index, name in TISSUE_LABELS.items():
        hu_mean = rng.uniform(*TISSUE_CT_HU[name])
        hu_spread = 0.05 * abs(hu_mean) if name in ("cortical_bone", "diploe") else 2.0  # texture, HU
        t1_mean = scanner.t1[name] * rng.uniform(0.95, 1.05)
        ct += fractions[index] * (hu_mean + hu_spread * ct_texture)
        mr += fractions[index] * (t1_mean * (1.0 + 0.03 * mr_texture))
    return ct, mr


def mr_scanner(rng: np.random.Generator, pose: HeadPose, mr: np.ndarray, scanner: Scanner) -> np.ndarray:
    """The MR as ``scanner`` images it: a smooth multiplicative bias field (quadratic in the head frame, up to
    about +-25 % for the default scanner), a gain, and Rician noise. ``mr`` is scaled in place."""
    u = [qa / 100.0 for qa in pose.frame]
    basis = [u[0], u[1], u[2], u[0] * u[1], u[1] * u[2], u[0] * u[2], u[0] ** 2, u[1] ** 2, u[2] ** 2]
    log_bias = sum(np.float32(c) * b for c, b in zip(rng.normal(0.0, scanner.bias_sd, len(basis)), basis))
    mr *= np.exp(np.clip(log_bias, -scanner.bias_clip, scanner.bias_clip)) * np.float32(rng.uniform(0.85, 1.15))
    sigma = np.float32(rng.uniform(*scanner.noise) * scanner.t1["white_matter"])
    real = mr + sigma * rng.standard_normal(pose.shape, np.float32)
    return np.sqrt(real ** 2 + (sigma * rng.standard_normal(pose.shape, np.float32)) ** 2)


def ct_scanner(rng: np.random.Generator, ct: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The CT as a scanner stores it: Gaussian noise, integer HU in [-1024, 3071], -1000 HU outside ``mask``."""
    ct += np.float32(rng.uniform(4.0, 10.0)) * rng.standard_normal(ct.shape, np.float32)
    return np.where(mask, np.clip(np.round(ct), CT_MIN_HU, CT_MAX_HU), CT_BACKGROUND_HU).astype(np.float32)


def make_head_phantom(
    rng: np.random.Generator, spacing_mm: float | Sequence[float] = 2.0, scanner: str = "default"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw one paired head: T1 MR, CT, body mask and tissue labels on one RAS grid.

    The steps, each drawing from ``rng`` in turn: the pose (``draw_head_pose``), the anatomy
    (``draw_anatomy``, painted into tissue fractions by ``tissue_fractions``), then the imaging
    (``tissue_images``, ``mr_scanner``, the body mask, ``ct_scanner``).

    Args:
        rng: source of all randomness; the same generator state gives the same subject.
        spacing_mm: isotropic voxel size, or one per axis. The field of view is fixed at
            192 x 224 x 192 mm, so 2 mm gives (96, 112, 96) voxels.
        scanner: a key of SCANNERS: the MR's tissue contrasts, bias field and noise. The anatomy and
            the CT of a generator state do not depend on it.

    Returns:
        mr: (X, Y, Z) float32, T1 on BrainWeb's relative scale (WM about 154).
        ct: (X, Y, Z) float32, integer HU in [-1024, 3071]; -1000 outside the mask.
        mask: (X, Y, Z) float32 in {0, 1}, the body outline.
        labels: (X, Y, Z) uint8, keys of TISSUE_LABELS (the tissue with the largest fraction).
        affine: (4, 4) float64 RAS+ voxel-to-world affine in mm.
    """
    if scanner not in SCANNERS:
        raise ValueError(f"scanner must be one of {sorted(SCANNERS)}, got {scanner!r}.")
    imaging = SCANNERS[scanner]
    spacing = _spacing3(spacing_mm)
    pose = draw_head_pose(rng, spacing)
    fractions = tissue_fractions(pose, draw_anatomy(rng, pose))
    labels = np.argmax(fractions, axis=0).astype(np.uint8)
    ct, mr = tissue_images(rng, pose, fractions, imaging)
    mr = mr_scanner(rng, pose, mr, imaging)
    mask = body_mask_from_mr(mr, spacing) | (labels > 0)  # the body outline always covers the body
    ct = ct_scanner(rng, ct, mask)
    return mr.astype(np.float32), ct, mask.astype(np.float32), labels, pose.affine


def patient_id(index: int, site: str = "B", centre: str = "A") -> str:
    """SynthRAD2023 Task 1 style id for the `index`-th subject (1-based): 1BA001, 1BA002, ..."""
    return f"1{site}{centre}{index:03d}"


def write_phantom_dataset(
    out_dir: str | os.PathLike, subjects: int, spacing_mm: float | Sequence[float] = 2.0, seed: int = 0,
    scanner: str = "default",
) -> list[dict[str, str]]:
    """Write `subjects` phantoms as `<out_dir>/<id>/{mr,ct,mask,labels}.nii.gz`.

    Subject i is drawn from `np.random.default_rng([seed, i])`, so it does not depend on how
    many subjects are written; `scanner` (a key of SCANNERS) picks how their MR is imaged. A
    `dataset.json` beside the patients records the generator, the seed, the scanner, the spacing
    and TISSUE_LABELS. Every image's description says SYNTHETIC.

    Returns:
        One dict per subject with keys id, mr, ct, mask, labels (paths as str), in id order.
    """
    if subjects < 1:
        raise ValueError(f"subjects must be at least 1, got {subjects}.")
    out = Path(out_dir)
    pairs = []
    for i in range(1, subjects + 1):
        mr, ct, mask, labels, affine = make_head_phantom(np.random.default_rng([seed, i]), spacing_mm, scanner)
        pid = patient_id(i)
        folder = out / pid
        folder.mkdir(parents=True, exist_ok=True)
        pair = {"id": pid}
        for name, array in (("mr", mr), ("ct", ct.astype(np.int16)), ("mask", mask.astype(np.uint8)), ("labels", labels)):
            path = folder / f"{name}.nii.gz"
            save_volume(array, affine, path, description=f"SYNTHETIC sci-diffusion head phantom {pid} {name}")
            pair[name] = str(path)
        pairs.append(pair)
    write_json(
        out / "dataset.json",
        {
            "synthetic": True,
            "generator": "sci_diffusion_medical.data.phantom.make_head_phantom",
            "seed": seed,
            "scanner": scanner,
            "spacing_mm": _spacing3(spacing_mm).tolist(),
            "subjects": [p["id"] for p in pairs],
            "tissue_labels": {str(k): v for k, v in TISSUE_LABELS.items()},
            "layout": "SynthRAD2023 Task 1: <id>/{mr,ct,mask,labels}.nii.gz",
        },
    )
    return pairs
