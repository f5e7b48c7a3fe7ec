"""The head phantom's anatomy: its tissue labels, the head's pose on the grid (``HeadPose``), its anatomy
(``HeadAnatomy``), and the partial-volume tissue fractions painted from the two (``tissue_fractions``).

These are the first two steps of ``phantom.make_head_phantom``: a subject is built from nested, smoothly
deformed surfaces in a head frame (x: left->right, y: posterior->anterior, z: inferior->superior,
millimetres), painted tissue by tissue with partial-volume fractions. The draws from the generator happen
in ``draw_head_pose`` and ``draw_anatomy``, in a fixed order (a seed's phantom must not change); the
painting draws nothing.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

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

FIELD_OF_VIEW_MM = (192.0, 224.0, 192.0)  # left-right, posterior-anterior, inferior-superior


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


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma_vox: float) -> np.ndarray:
    """Gaussian random field of unit standard deviation, correlation length ~sigma_vox voxels.

    Drawn on a half-resolution grid and upsampled linearly: a quarter of the filtering cost.
    """
    small = tuple(max(4, (n + 1) // 2) for n in shape)
    field = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), sigma_vox / 2.0, mode="wrap")
    field = ndimage.zoom(field, [n / m for n, m in zip(shape, small)], order=1, grid_mode=True, mode="grid-wrap")
    field -= field.mean()
    field /= max(float(field.std()), 1e-6)
    return field


class TissueCanvas:
    """Partial-volume tissue fractions, painted structure after structure like layers of paint.

    ``labels``: the tissue table, ``{index: name}`` (``TISSUE_LABELS``; phantom v2 adds tissues to it).
    """

    def __init__(self, shape: Sequence[int], voxel_mm: float, labels: dict[int, str] = TISSUE_LABELS):
        self.label = {name: index for index, name in labels.items()}
        self.fractions = np.zeros((len(labels), *shape), np.float32)
        self.fractions[self.label["air"]] = 1.0
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
        view[self.label[tissue]] += occ


def _bounding_box(inside: np.ndarray) -> tuple[slice, ...]:
    box = []
    for axis in range(inside.ndim):
        other = tuple(a for a in range(inside.ndim) if a != axis)
        hit = np.flatnonzero(inside.any(axis=other))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def voxel_spacing(spacing_mm: float | Sequence[float]) -> np.ndarray:
    """(3,) float64 voxel size (mm) from one isotropic size or one per axis; every one positive."""
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,)).copy()
    if np.any(spacing <= 0):
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}.")
    return spacing


def phantom_affine(spacing_mm: float | Sequence[float], shape: Sequence[int],
                   origin_offset_mm: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """RAS+ voxel-to-world affine (4, 4) in mm whose grid centre sits at `origin_offset_mm`."""
    spacing = voxel_spacing(spacing_mm)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0 * spacing + np.asarray(origin_offset_mm)
    return affine


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
    return HeadPose(shape, affine, float(np.mean(spacing)), head_frame(rng, shape, affine, rotation, head_centre))


def head_frame(rng: np.random.Generator, shape: tuple[int, ...], affine: np.ndarray, rotation: np.ndarray,
               head_centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every voxel's position in the template head frame (``HeadPose.frame``; mm), for a head rotated by ``rotation``
    (3 x 3) about ``head_centre`` (world mm): draws the head's size and proportions, then a smooth random deformation
    (a few mm, wavelengths 80-160 mm), in this order. ``affine`` must be diagonal (``phantom_affine``)."""
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
    return x, y, z


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
    folds = smooth_noise(rng, pose.shape, sigma_vox=4.0 / pose.voxel_mm)
    fissure_half_width = rng.uniform(1.0, 1.8)
    ventricle_size = rng.uniform(0.7, 1.5)
    frontal = rng.uniform(0.6, 1.3)
    maxillary = rng.uniform(0.85, 1.15)
    return HeadAnatomy(t_skin, t_fat, t_outer, t_diploe, t_inner, t_csf, t_grey, t_plate, folds, fissure_half_width,
                       ventricle_size, frontal, maxillary)


# ----- painting the tissues: deterministic given the pose and the anatomy ------------------------
SKULL_BASE_SLOPE = 0.18  # the skull base rises towards the front


def paint_scalp_and_skull(canvas: TissueCanvas, pose: HeadPose, anatomy: HeadAnatomy) -> np.ndarray:
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


def paint_skull_base(canvas: TissueCanvas, pose: HeadPose, anatomy: HeadAnatomy, inner_skull: np.ndarray) -> np.ndarray:
    """A plate sloping up towards the front closes the brain cavity below. Returns the cavity's signed distance (mm)."""
    _, y, z = pose.frame
    slope = SKULL_BASE_SLOPE
    floor = (-32.0 + slope * y - z) / np.sqrt(1.0 + slope**2)  # > 0 below the cavity floor
    t_plate, t_inner, t_outer = anatomy.t_plate, anatomy.t_inner, anatomy.t_outer
    canvas.paint("skin", inner_skull)  # soft tissue under the skull base (pharynx, muscles)
    canvas.paint("cortical_bone", np.maximum(inner_skull, np.maximum(-floor, floor - t_plate)))
    canvas.paint("diploe", np.maximum(inner_skull, np.maximum(t_inner - floor, floor - t_plate + t_outer)))
    return np.maximum(inner_skull, floor)


def paint_brain(canvas: TissueCanvas, pose: HeadPose, anatomy: HeadAnatomy, cavity: np.ndarray) -> None:
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


def paint_sinuses(canvas: TissueCanvas, pose: HeadPose, anatomy: HeadAnatomy) -> None:
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


def paint_cervical_spine(canvas: TissueCanvas, pose: HeadPose, anatomy: HeadAnatomy) -> None:
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
    canvas = TissueCanvas(pose.shape, pose.voxel_mm)
    inner_skull = paint_scalp_and_skull(canvas, pose, anatomy)
    cavity = paint_skull_base(canvas, pose, anatomy, inner_skull)
    paint_brain(canvas, pose, anatomy, cavity)
    paint_sinuses(canvas, pose, anatomy)
    paint_cervical_spine(canvas, pose, anatomy)
    return canvas.fractions
