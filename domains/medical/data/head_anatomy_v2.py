"""The anatomy of head phantom v2 (issue 30 §1): v1's head (``head_anatomy.py``) with a neck, a variable field of
view, and the structures where MR-to-CT is hard: mastoid air cells, frontal, maxillary and sphenoid sinuses, the
nasal cavity, orbits with their eyes, teeth and the mandible, each also marked in a structure map.

Phantom v1 stays as it was (its draws and its pictures do not change); v2 reuses its painters (skull base,
brain, sinuses, spine) on a canvas with three more tissues (``TISSUE_LABELS_V2``) and draws in an order of its own.
Head frame as in v1: x left->right, y posterior->anterior, z inferior->superior, millimetres, head centre at 0.

Sizes, for a head of scale 1 (each subject scales them by its own draws): eye globes 23-25 mm across (6.4-8.2 mL);
maxillary sinuses about 10 mL each, the nasal cavity about 11 mL, frontal sinus 1-7 mL, sphenoid 3 mL; mastoid
regions about 5-9 mL each, 30-70 % of it air cells of 3-6 mm walled by bone; 28-32 teeth (about 0.25 mL each);
a mandible of about 30-50 mL of bone.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from .head_anatomy import (
    TISSUE_LABELS,
    HeadAnatomy,
    HeadPose,
    TissueCanvas,
    _ellipsoid_distance,
    draw_anatomy,
    head_frame,
    paint_brain,
    paint_cervical_spine,
    paint_sinuses,
    paint_skull_base,
    phantom_affine,
    smooth_noise,
)

TISSUE_LABELS_V2: dict[int, str] = {
    **TISSUE_LABELS,
    10: "teeth",        # enamel and dentine
    11: "eye",          # the vitreous of the globe (water: CSF-like on MR and CT)
    12: "mastoid_air",  # the air cells of the mastoid process
}
STRUCTURES: dict[int, str] = {  # the structure map's ids; 0 is none of them
    1: "frontal_sinus", 2: "maxillary_sinus_left", 3: "maxillary_sinus_right", 4: "nasal_cavity",
    5: "sphenoid_sinus", 6: "mastoid_left", 7: "mastoid_right", 8: "eye_left", 9: "eye_right", 10: "teeth",
    11: "mandible",
}
STRUCTURE = {name: index for index, name in STRUCTURES.items()}
SINUSES = ("frontal_sinus", "maxillary_sinus_left", "maxillary_sinus_right", "sphenoid_sinus", "nasal_cavity")

IN_PLANE_FOV_MM = (192.0, 224.0)  # left-right, posterior-anterior, as v1; axial slices keep one size
FOV_HEIGHT_MM = (200.0, 250.0)  # inferior-superior extent, drawn per subject: the neck's coverage varies
FOV_TOP_MM = (70.0, 96.0)  # the grid's top above the head centre: the crown (66-80 mm up) is sometimes cut off


class StructureMap:
    """An integer map of named structures, marked where a signed distance is negative (later marks win)."""

    def __init__(self, shape: Sequence[int]):
        self.ids = np.zeros(tuple(shape), np.uint8)

    def mark(self, name: str, distance: np.ndarray) -> None:
        self.ids[distance < 0] = STRUCTURE[name]


@dataclass(frozen=True)
class FaceAnatomy:
    """What v2 draws beyond v1's ``HeadAnatomy`` (lengths in mm, scales relative to the template).

    Attributes:
        eye_radius: the globes' radius.
        orbit: scale of the orbits (bony cone and orbital fat).
        mastoid: scale of the mastoid regions; ``pneumatisation``: the fraction of them that is air cells.
        mastoid_cells: (X, Y, Z) unit Gaussian random field (about 2 mm correlation) whose high values are cells.
        jaw: scale of the dental arches and the mandible; ``missing_teeth``: (2, 16) bool, teeth that are absent.
        nasal: scale of the nasal cavity.
    """

    eye_radius: float
    orbit: float
    mastoid: float
    pneumatisation: float
    mastoid_cells: np.ndarray
    jaw: float
    missing_teeth: np.ndarray
    nasal: float


def draw_pose_v2(rng: np.random.Generator, spacing: np.ndarray) -> HeadPose:
    """The grid and the head on it: a field of view of ``IN_PLANE_FOV_MM`` by a height drawn from ``FOV_HEIGHT_MM``
    whose top lies ``FOV_TOP_MM`` above the head centre (so the neck's coverage varies and the crown is sometimes
    cut), the head centre off the grid's axis by up to 10 mm, rotated by up to 10 / 6 / 10 degrees; then v1's size,
    proportions and smooth deformation (``head_anatomy.head_frame``). Draws in this order."""
    height, top = rng.uniform(*FOV_HEIGHT_MM), rng.uniform(*FOV_TOP_MM)
    fov = (*IN_PLANE_FOV_MM, height)
    shape = tuple(int(round(f / s)) for f, s in zip(fov, spacing))
    centre_offset = np.array([*rng.uniform(-10.0, 10.0, 2), top - height / 2.0])  # grid centre - head centre
    affine = phantom_affine(spacing, shape, origin_offset_mm=centre_offset)
    rotation = Rotation.from_euler("xyz", rng.uniform([-10, -6, -10], [10, 6, 10]), degrees=True).as_matrix()
    frame = head_frame(rng, shape, affine, rotation, np.zeros(3))
    return HeadPose(shape, affine, float(np.mean(spacing)), frame)


def draw_face_anatomy(rng: np.random.Generator, pose: HeadPose) -> FaceAnatomy:
    """Draw v2's structures, in the order of ``FaceAnatomy``'s fields."""
    eye_radius, orbit = rng.uniform(11.5, 12.5), rng.uniform(0.9, 1.1)
    mastoid, pneumatisation = rng.uniform(0.8, 1.2), rng.uniform(0.3, 0.7)
    cells = smooth_noise(rng, pose.shape, sigma_vox=2.0 / pose.voxel_mm)
    jaw = rng.uniform(0.93, 1.07)
    missing = rng.random((2, 16)) < 0.06
    nasal = rng.uniform(0.9, 1.2)
    return FaceAnatomy(eye_radius, orbit, mastoid, pneumatisation, cells, jaw, missing, nasal)


# ----- painting: deterministic given the pose and the anatomy --------------------------------------------------
def head_surface(pose: HeadPose) -> np.ndarray:
    """The skin's signed distance (mm): v1's cranium and lower head smoothly joined to a neck that leaves the
    field of view at the bottom."""
    x, y, z = pose.frame
    cranium = pose.ellipsoid((0.0, 0.0, 0.0), (78.0, 96.0, 74.0))
    lower_head = pose.ellipsoid((0.0, 8.0, -68.0), (62.0, 78.0, 62.0))
    neck = np.maximum(np.sqrt((x / 50.0) ** 2 + ((y + 8.0) / 52.0) ** 2) * 50.0 - 50.0, z + 95.0)
    join = 10.0
    return -join * np.logaddexp(np.logaddexp(-cranium / join, -lower_head / join), -neck / join)


def paint_scalp_skull_and_neck(canvas: TissueCanvas, pose: HeadPose, anatomy: HeadAnatomy) -> np.ndarray:
    """v1's scalp and skull (``head_anatomy.paint_scalp_and_skull``) under a skin that includes the neck. Returns the
    inner skull surface's signed distance (mm)."""
    a = anatomy
    skin = head_surface(pose)
    canvas.paint("skin", skin)
    canvas.paint("fat", skin + a.t_skin)
    canvas.paint("skin", skin + a.t_skin + a.t_fat)  # muscle under the fat
    cranium = pose.ellipsoid((0.0, 0.0, 0.0), (78.0, 96.0, 74.0))
    depth = a.t_skin + a.t_fat
    canvas.paint("cortical_bone", cranium + depth)
    canvas.paint("diploe", cranium + depth + a.t_outer)
    canvas.paint("cortical_bone", cranium + depth + a.t_outer + a.t_diploe)
    return cranium + depth + a.t_outer + a.t_diploe + a.t_inner


def paint_orbits(canvas: TissueCanvas, marks: StructureMap, pose: HeadPose, face: FaceAnatomy, inside: np.ndarray,
                 cavity: np.ndarray) -> None:
    """Each orbit under the anterior cranial fossa (``cavity``, the brain's, kept 1.5 mm away): a bony shell around
    orbital fat, the globe (vitreous) at its front."""
    o, r = face.orbit, face.eye_radius
    below_brain = np.maximum(inside, 1.5 - cavity)
    for side, name in ((-1.0, "eye_left"), (1.0, "eye_right")):
        cone = pose.ellipsoid((side * 31.0, 58.0, -32.0), (17.0 * o, 26.0 * o, 15.0 * o))
        canvas.paint("cortical_bone", np.maximum(cone - 2.5, np.maximum(inside, -cavity)))
        canvas.paint("fat", np.maximum(cone, below_brain))
        globe = np.maximum(pose.ellipsoid((side * 31.0, 68.0, -32.0), (r, r, r)), below_brain)
        canvas.paint("eye", globe)
        marks.mark(name, globe)


def paint_mastoids(canvas: TissueCanvas, marks: StructureMap, pose: HeadPose, face: FaceAnatomy, inside: np.ndarray) -> None:
    """Each mastoid region behind the ear, below the skull base: bone honeycombed by air cells (the high values of
    ``face.mastoid_cells``, ``face.pneumatisation`` of the region) behind 1.5 mm of cortex."""
    m = face.mastoid
    threshold = float(np.quantile(face.mastoid_cells, 1.0 - face.pneumatisation))
    cells = (threshold - face.mastoid_cells) * 2.0  # about mm from a cell's wall: unit field, 2 mm correlation
    for side, name in ((-1.0, "mastoid_left"), (1.0, "mastoid_right")):
        region = np.maximum(pose.ellipsoid((side * 50.0, -20.0, -42.0), (9.0 * m, 13.0 * m, 12.0 * m)), inside)
        canvas.paint("cortical_bone", region)
        canvas.paint("mastoid_air", np.maximum(region + 1.5, cells))
        marks.mark(name, region)


def arch_distance(frame: Sequence[np.ndarray], front_y: float, depth: float, half_width: float) -> np.ndarray:
    """Distance (mm) in the axial plane from the parabolic arch ``y = front_y - depth (x / half_width)^2``,
    ``|x| <= half_width``, at any height, for head-frame coordinates ``frame`` (x, y, z); sampled at 2 mm along x
    (enough for the tubes painted around it)."""
    x, y = frame[0], frame[1]
    best = np.full(x.shape, np.inf, np.float32)
    for xs in np.arange(-half_width, half_width + 1e-6, 2.0):
        ys = front_y - depth * (xs / half_width) ** 2
        best = np.minimum(best, np.sqrt((x - xs) ** 2 + (y - ys) ** 2))
    return best


def in_box(pose: HeadPose, where: np.ndarray, compute) -> np.ndarray:
    """``compute(frame)`` evaluated only inside the bounding box of ``where`` (X, Y, Z) bool, +inf (far outside)
    elsewhere: the jaws are a small part of the grid, and each tooth is an ellipsoid of its own."""
    out = np.full(pose.shape, np.inf, np.float32)
    if where.any():
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(where))
        out[box] = compute([f[box] for f in pose.frame])
    return out


def mandible_distance(frame: Sequence[np.ndarray], face: FaceAnatomy) -> np.ndarray:
    """The mandible's signed distance (mm) for head-frame coordinates ``frame``: its body (a tube of 6 mm radius and
    22 mm height along an arch at z = -108 mm) and its two rami."""
    j = face.jaw
    body = np.maximum(arch_distance(frame, 60.0 * j, 30.0 * j, 38.0 * j) - 6.0, np.abs(frame[2] + 108.0) - 11.0)
    for side in (-1.0, 1.0):
        body = np.minimum(body, _ellipsoid_distance(frame, (side * 40.0 * j, 22.0, -86.0), (5.0, 9.0, 22.0)))
    return body


def teeth_distance(frame: Sequence[np.ndarray], face: FaceAnatomy) -> np.ndarray:
    """The teeth's signed distance (mm) for head-frame coordinates ``frame``: 16 in each jaw along the dental arches,
    upper ones (z = -84 mm) under the maxilla, lower ones (z = -94 mm) on the mandible, absent ones left out."""
    j = face.jaw
    teeth = np.full(frame[0].shape, np.inf, np.float32)
    for jaw_index, (zc, front) in enumerate(((-84.0, 68.0), (-94.0, 66.0))):
        for k, xs in enumerate(np.linspace(-24.0, 24.0, 16) * j):
            if not face.missing_teeth[jaw_index, k]:
                ys = (front - 30.0 * (xs / (25.0 * j)) ** 2) * j
                width = 3.5 if abs(xs) < 12 else 4.5  # incisors and canines, premolars and molars
                teeth = np.minimum(teeth, _ellipsoid_distance(frame, (xs, ys, zc), (width, width, 5.0)))
    return teeth


def paint_jaws(canvas: TissueCanvas, marks: StructureMap, pose: HeadPose, face: FaceAnatomy, inside: np.ndarray) -> None:
    """The mandible (cortical bone around marrow) and the teeth (``mandible_distance``, ``teeth_distance``), computed
    in the jaws' slab of the grid only."""
    z = pose.frame[2]
    mandible = np.maximum(in_box(pose, (z > -125.0) & (z < -60.0), lambda frame: mandible_distance(frame, face)), inside)
    teeth = np.maximum(in_box(pose, (z > -104.0) & (z < -74.0), lambda frame: teeth_distance(frame, face)), inside)
    canvas.paint("cortical_bone", mandible)
    canvas.paint("diploe", mandible + 2.5)
    marks.mark("mandible", mandible)
    canvas.paint("teeth", teeth)
    marks.mark("teeth", teeth)


def mark_sinuses(marks: StructureMap, pose: HeadPose, anatomy: HeadAnatomy, face: FaceAnatomy) -> None:
    """The air spaces ``head_anatomy.paint_sinuses`` paints (the same ellipsoids), and a larger nasal cavity, named."""
    f, m = anatomy.frontal, anatomy.maxillary
    marks.mark("frontal_sinus", pose.ellipsoid((0.0, 81.0, -8.0), (15.0 * f, 6.0, 8.0 * f)))
    sphenoid_z = -32.0 + 0.18 * 22.0 - anatomy.t_plate - 10.0
    marks.mark("sphenoid_sinus", pose.ellipsoid((0.0, 22.0, sphenoid_z), (11.0, 9.0, 8.0)))
    for side, name in ((-1.0, "maxillary_sinus_left"), (1.0, "maxillary_sinus_right")):
        marks.mark(name, pose.ellipsoid((side * 18.0, 50.0, -63.0), (11.0 * m, 14.0 * m, 15.0 * m)))
    marks.mark("nasal_cavity", nasal_cavity(pose, face))


def nasal_cavity(pose: HeadPose, face: FaceAnatomy) -> np.ndarray:
    """The nasal cavity's signed distance (mm): wider and longer than v1's, scaled by ``face.nasal``."""
    n = face.nasal
    return pose.ellipsoid((0.0, 58.0, -58.0), (6.0 * n, 24.0 * n, 17.0 * n))


def tissue_fractions_v2(pose: HeadPose, anatomy: HeadAnatomy, face: FaceAnatomy) -> tuple[np.ndarray, np.ndarray]:
    """``(fractions (len(TISSUE_LABELS_V2), X, Y, Z) float32, structures (X, Y, Z) uint8)`` of a v2 head, painted
    outside in: v1's scalp, skull, skull base, brain and sinuses, then the orbits, the nasal cavity, the mastoids,
    the jaws and the spine; every v2 structure is kept 3 mm inside the skin."""
    canvas, marks = TissueCanvas(pose.shape, pose.voxel_mm, TISSUE_LABELS_V2), StructureMap(pose.shape)
    inner_skull = paint_scalp_skull_and_neck(canvas, pose, anatomy)
    cavity = paint_skull_base(canvas, pose, anatomy, inner_skull)
    paint_brain(canvas, pose, anatomy, cavity)
    inside = head_surface(pose) + 3.0
    paint_orbits(canvas, marks, pose, face, inside, cavity)
    paint_sinuses(canvas, pose, anatomy)
    cavity_n = nasal_cavity(pose, face)
    canvas.paint("cortical_bone", np.maximum(cavity_n - 2.0, inside))
    canvas.paint("sinus_air", np.maximum(cavity_n, inside))
    mark_sinuses(marks, pose, anatomy, face)
    paint_mastoids(canvas, marks, pose, face, inside)
    paint_jaws(canvas, marks, pose, face, inside)
    paint_cervical_spine(canvas, pose, anatomy)
    return canvas.fractions, marks.ids


def draw_anatomy_v2(rng: np.random.Generator, spacing: np.ndarray) -> tuple[HeadPose, HeadAnatomy, FaceAnatomy]:
    """A v2 head: its pose (``draw_pose_v2``), v1's anatomy (``head_anatomy.draw_anatomy``) and v2's structures
    (``draw_face_anatomy``), drawn in this order."""
    pose = draw_pose_v2(rng, spacing)
    anatomy = draw_anatomy(rng, pose)
    return pose, anatomy, draw_face_anatomy(rng, pose)
