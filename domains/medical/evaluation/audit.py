"""A memorisation audit: is a synthetic subject, or one of its axial slices, a near copy of a training subject?

Pipeline, the same for every audited subject (synthetic, held-out real, or a training subject left out):

1. **Physical grid.** CT (linear), mask and labels (nearest) are read onto RAS and resampled to an isotropic
   ``spacing_mm`` (``images.load_for_model``), then placed in a cube of ``box_mm`` (default 256 mm: 64^3 voxels
   at 4 mm) whose centre is the body's centroid, rounded to a whole voxel so that no voxel is interpolated.
   The body is the mask when the subject has one, else the largest connected region of CT above -500 HU.
2. **Rigid registration** onto each training subject (moving: the audited subject; fixed: the training one).
   Candidates: the centroid-aligned correlation on a 2x coarser grid, the larger of the subject as it is and
   mirrored across the sagittal plane through its centroid; the ``candidates`` best training subjects are then
   refined, with and without the mirror, by 3 rotations (within +-15 degrees) and 3 translations (within +-20 mm)
   that maximise the CT correlation on the coarse grid inside the dilated training body (Powell).
3. **Volume distances**, on the ``spacing_mm`` grid after that transform: CT ``1 - r``, r the Pearson correlation
   inside the union of both bodies (the whole cube would be mostly air, whose agreement says nothing about the
   anatomy); labels ``1 - mean Dice`` over the label values either subject has (nearest neighbour), when both
   subjects have labels. The nearest training subject is the one at the smallest CT distance.
4. **Slice distances**: every axial slice with at least 5 % body (of the cube's cross-section) is recentred on
   its own body centroid (whole voxels, no interpolation: a copied slice stays identical) and compared with
   every such slice of every training subject, at any height, as it is and mirrored; the distance is again
   ``1 - r`` inside the union of the two bodies, for all pairs at once through matrix products. Slices are not
   taken from the registered volume: a transform other than a whole-voxel shift would interpolate a copied slice
   with its neighbours, and the subject a slice was copied from need not be the nearest one as a volume.
5. **Thresholds from the data.** The same pipeline runs on held-out real subjects the generator did not train
   on (or, without them, on each training subject against the others: leave-one-out), giving the distribution of
   nearest-training distances that new subjects have. A synthetic subject (slice) is flagged when a distance of
   it lies below that distribution's ``percentile`` (per volume: CT or labels; per slice: pooled over slices).
   Without memorisation about ``percentile`` % of the synthetic subjects and slices are flagged by chance.

Limits (also in ETHICS.md): it does not see copies that are deformed non-rigidly, copied regions smaller than a
slice at ``spacing_mm``, or what a membership-inference attack could learn; slices are aligned by translation
(and the mirror) only. Passing it is necessary, not sufficient, for privacy.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage, optimize
from scipy.spatial.transform import Rotation

from sci_diffusion.atomic import write_json

from ..data.pairs import find_synthrad_pairs
from ..io.figures import closest_pairs_panel
from ..io.images import load_for_model
from ..io.nifti import MedicalInputError
from .body_cube import BACKGROUND_HU, body_centring, place_in_cube

BODY_HU = -500.0
MIRROR = np.diag([-1.0, 1.0, 1.0])  # left-right, across the sagittal plane (RAS x)
REGISTRATION_POINTS = 4096  # coarse voxels of the fixed subject sampled by each registration step
QUANTILES = {"min": 0.0, "p05": 0.05, "p25": 0.25, "median": 0.5, "p75": 0.75, "p95": 0.95, "max": 1.0}


@dataclass(frozen=True)
class AuditSettings:
    """How the audit compares subjects.

    Attributes:
        spacing_mm: isotropic voxel size of the comparison (mm).
        box_mm: edge of the cube around the body centroid (mm); rounded to an even number of voxels.
        percentile: a distance below this percentile of the reference distribution is flagged (0 < p < 50).
        candidates: training subjects refined by registration per audited subject.
        max_rotation_deg, max_translation_mm: bounds of the rigid refinement (about the centroid alignment).
        min_body_fraction: axial slices with less body (fraction of the cube's cross-section) are skipped.
        margin_mm: the fixed body is dilated by this much to give the registration's region.
    """

    spacing_mm: float = 4.0
    box_mm: float = 256.0
    percentile: float = 5.0
    candidates: int = 3
    max_rotation_deg: float = 15.0
    max_translation_mm: float = 20.0
    min_body_fraction: float = 0.05
    margin_mm: float = 16.0

    @property
    def box_voxels(self) -> int:
        """Voxels along each edge of the cube (even, so that the coarse grid halves it exactly)."""
        return max(2, 2 * int(round(self.box_mm / self.spacing_mm / 2)))

    def check(self) -> None:
        """Raise ``MedicalInputError`` (one sentence) for settings the audit cannot use."""
        if not 0 < self.percentile < 50:
            raise MedicalInputError(f"--percentile must lie strictly between 0 and 50, got {self.percentile:g}.")
        if not self.spacing_mm > 0:
            raise MedicalInputError(f"--spacing-mm must be positive, got {self.spacing_mm:g}.")
        if self.box_voxels < 8:
            raise MedicalInputError(f"--box-mm {self.box_mm:g} holds fewer than 8 voxels of {self.spacing_mm:g} mm.")
        if self.candidates < 1:
            raise MedicalInputError(f"--candidates must be at least 1, got {self.candidates}.")


@dataclass
class Slices:
    """A subject's usable axial slices, each recentred on its own body centroid.

    Attributes:
        images: (K, n * n) float32 CT in HU (n: the cube's edge in voxels).
        weights: (K, n * n) float32 body, 0 or 1.
        z: (K,) int, each slice's index along the cube's S axis.
    """

    images: np.ndarray
    weights: np.ndarray
    z: np.ndarray


@dataclass
class Subject:
    """One subject in the audit's cube (n voxels a side, ``spacing_mm``, RAS axes, centred on the body).

    Attributes:
        id, path: the subject's id and its CT file.
        ct: (n, n, n) float32 HU, -1000 outside the field of view.
        body: (n, n, n) float32, 1 in the body.
        labels: (n, n, n) int32 or None.
        affine: (4, 4) cube voxel -> world (mm, RAS+).
        centroid_mm: (3,) the body's centroid in world mm.
        offset: (3,) int, cube index - index on the subject's RAS grid at ``spacing_mm``.
        coarse_ct, coarse_body: (n/2, n/2, n/2) float64 2x2x2 block means, for the registration.
        slices: the recentred axial slices.
        region: the fixed side of a registration onto this subject (``registration_region``; training subjects).
    """

    id: str
    path: str
    ct: np.ndarray
    body: np.ndarray
    labels: np.ndarray | None
    affine: np.ndarray
    centroid_mm: np.ndarray
    offset: np.ndarray
    coarse_ct: np.ndarray
    coarse_body: np.ndarray
    slices: Slices
    region: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)


def body_from_ct(ct: np.ndarray) -> np.ndarray:
    """(X, Y, Z) bool: the largest connected region of ``ct`` (HU) above -500 HU (leaves out a table apart)."""
    regions, count = ndimage.label(ct > BODY_HU)
    if count <= 1:
        return regions > 0
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    return regions == sizes.argmax()


def block_mean(volume: np.ndarray) -> np.ndarray:
    """(n/2, n/2, n/2) float64: means of the 2x2x2 blocks of an (n, n, n) cube, n even."""
    h = volume.shape[0] // 2
    return np.asarray(volume, dtype=np.float64).reshape(h, 2, h, 2, h, 2).mean(axis=(1, 3, 5))


def axial_slices(ct: np.ndarray, body: np.ndarray, min_body_fraction: float) -> Slices:
    """The axial slices of an (n, n, n) cube with at least ``min_body_fraction`` body, each shifted by whole voxels
    so that its body centroid sits at the slice's centre (``Slices``)."""
    n = ct.shape[0]
    area = body.sum(axis=(0, 1))
    keep = np.flatnonzero(area >= min_body_fraction * n * n)
    if not len(keep):
        return Slices(np.zeros((0, n * n), np.float32), np.zeros((0, n * n), np.float32), keep)
    coords = np.arange(n, dtype=np.float64)
    cx = (body.sum(axis=1) * coords[:, None]).sum(axis=0)[keep] / area[keep]
    cy = (body.sum(axis=0) * coords[:, None]).sum(axis=0)[keep] / area[keep]
    shifts = np.round((n - 1) / 2 - np.stack([cx, cy], axis=1)).astype(int)
    images = [ndimage.shift(ct[:, :, z], s, order=0, cval=BACKGROUND_HU) for z, s in zip(keep, shifts)]
    weights = [ndimage.shift(body[:, :, z], s, order=0, cval=0.0) for z, s in zip(keep, shifts)]
    return Slices(np.stack(images).reshape(len(keep), n * n).astype(np.float32),
                  np.stack(weights).reshape(len(keep), n * n).astype(np.float32), keep)


def load_subject(pair: dict[str, str], settings: AuditSettings) -> Subject:
    """Read one subject (``{"id", "ct"[, "mask", "labels"]}``) into the audit's cube; what lies outside the cube
    (a body longer than ``box_mm``) is left out.

    Raises:
        MedicalInputError: unreadable, constant CT, or no body (one sentence naming the file).
    """
    keys = ["ct"] + [k for k in ("mask", "labels") if k in pair]
    loaded = load_for_model({k: pair[k] for k in keys}, voxel_mm=settings.spacing_mm)
    ct = loaded.arrays["ct"]
    if float(ct.max() - ct.min()) <= 1e-6 * max(1.0, float(np.abs(ct).max())):
        raise MedicalInputError(f"{pair['ct']} is constant; a constant volume cannot be audited.")
    body = loaded.arrays["mask"] > 0.5 if "mask" in loaded.arrays else body_from_ct(ct)
    if not body.any():
        raise MedicalInputError(f"{pair['ct']} has no body (an empty mask, or no voxel above {BODY_HU:g} HU).")
    n = settings.box_voxels
    offset, centroid = body_centring(body, n)  # a whole-voxel shift into the cube: nothing is interpolated
    cube_ct, cube_body = place_in_cube(ct, offset, n, BACKGROUND_HU), place_in_cube(body.astype(np.float32), offset, n, 0.0)
    labels = place_in_cube(np.rint(loaded.arrays["labels"]).astype(np.int32), offset, n, 0) if "labels" in pair else None
    to_grid = np.eye(4)
    to_grid[:3, 3] = -offset
    return Subject(pair["id"], pair["ct"], cube_ct, cube_body, labels, loaded.affine @ to_grid,
                   (loaded.affine @ np.append(centroid, 1.0))[:3], offset, block_mean(cube_ct), block_mean(cube_body),
                   axial_slices(cube_ct, cube_body, settings.min_body_fraction))


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch's intra-op threads set to one, then restored. The audit's products are many and modest; on a machine
    whose cores are busy each parallel region waits for descheduled threads (on 2 shared cores: 0.3 s against
    7 ms for one (1, 262144) correlation)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def union_correlation(x: np.ndarray, a: np.ndarray, y: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) Pearson correlations of the rows of ``x`` (N, D) with those of ``y`` (M, D), each pair over the union
    of their bodies: voxel weights ``a + b - a b`` (``a`` (N, D), ``b`` (M, D) in [0, 1]; for 0/1 bodies exactly
    the union). All pairs through twelve matrix products (torch, float64, one thread); 0 where either side is
    constant on the union."""
    with one_torch_thread():
        x, a, y, b = (torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)) for v in (x, a, y, b))
        ax, by, xx, yy = a * x, b * y, x * x, y * y
        n = (a.sum(1)[:, None] + b.sum(1)[None] - a @ b.T).clamp(min=1e-12)
        sx = ax.sum(1)[:, None] + x @ b.T - ax @ b.T
        sy = by.sum(1)[None] + a @ y.T - a @ by.T
        sxx = (ax * x).sum(1)[:, None] + xx @ b.T - (ax * x) @ b.T
        syy = (by * y).sum(1)[None] + a @ yy.T - a @ (by * y).T
        sxy = ax @ y.T + x @ by.T - ax @ by.T
        var = (sxx - sx * sx / n).clamp(min=0.0) * (syy - sy * sy / n).clamp(min=0.0)
        ok = var > 1e-12 * (sxx * syy).clamp(min=1e-300)
        r = torch.where(ok, (sxy - sx * sy / n) / torch.where(ok, var, torch.ones_like(var)).sqrt(), torch.zeros_like(var))
    return r.numpy()


def labels_distance(a: np.ndarray, b: np.ndarray) -> float | None:
    """``1 - mean Dice`` of two label volumes (same shape, ints) over the values > 0 that either holds; None
    when neither holds any."""
    values = np.union1d(np.unique(a), np.unique(b))
    k = len(values)
    joint = np.bincount((np.searchsorted(values, a) * k + np.searchsorted(values, b)).ravel(),
                        minlength=k * k).reshape(k, k)
    present = values > 0
    if not present.any():
        return None
    dice = 2 * np.diag(joint)[present] / (joint.sum(1)[present] + joint.sum(0)[present])
    return float(1.0 - dice.mean())


@dataclass
class TrainingSet:
    """The training subjects, their coarse cubes stacked for the candidate search, and all their axial slices, as
    they are and mirrored (``axial_slices`` of the mirrored cube), stacked for the slice search.

    Attributes:
        subjects: the training ``Subject`` s, in id order.
        coarse_ct, coarse_body: (N, (n/2)^3) float64.
        slices: every training slice (T of them), then ``owner`` (T,) its subject's index and ``mirrored`` (T,) bool.
    """

    subjects: list[Subject]
    coarse_ct: np.ndarray
    coarse_body: np.ndarray
    slices: Slices
    owner: np.ndarray
    mirrored: np.ndarray

    @classmethod
    def of(cls, subjects: list[Subject], settings: AuditSettings) -> TrainingSet:
        """Stack ``subjects``; each gets its ``region`` (``registration_region``)."""
        stacks = []
        for i, s in enumerate(subjects):
            s.region = registration_region(s, settings)
            mirrored = axial_slices(s.ct[::-1], s.body[::-1], settings.min_body_fraction)
            stacks += [(i, False, s.slices), (i, True, mirrored)]
        return cls(subjects, np.stack([s.coarse_ct.ravel() for s in subjects]),
                   np.stack([s.coarse_body.ravel() for s in subjects]),
                   Slices(*(np.concatenate([getattr(st, k) for _, _, st in stacks]) for k in ("images", "weights", "z"))),
                   np.concatenate([np.full(len(st.z), i) for i, _, st in stacks]),
                   np.concatenate([np.full(len(st.z), m) for _, m, st in stacks]))


def registration_region(subject: Subject, settings: AuditSettings) -> tuple[np.ndarray, np.ndarray]:
    """The fixed side of a registration: at most ``REGISTRATION_POINTS`` coarse voxels (a fixed random subset) within
    ``margin_mm`` of the body, as ``(points (3, N) coarse voxel coordinates, values (N,) CT there, centred and scaled
    to unit norm)``."""
    steps = max(1, int(round(settings.margin_mm / (2 * settings.spacing_mm))))
    points = np.argwhere(ndimage.binary_dilation(subject.coarse_body > 0.5, iterations=steps))
    if len(points) > REGISTRATION_POINTS:  # the cost of an evaluation is the number of points
        points = points[np.sort(np.random.default_rng(0).choice(len(points), REGISTRATION_POINTS, replace=False))]
    values = subject.coarse_ct[tuple(points.T)]
    values = values - values.mean()
    return points.T.astype(np.float64), values / max(float(np.linalg.norm(values)), 1e-12)


def rigid_matrix(angles_deg: Sequence[float], mirrored: bool) -> np.ndarray:
    """(3, 3): the rotation by ``angles_deg`` (extrinsic x, y, z, degrees) after the left-right mirror when asked."""
    rotation = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    return rotation @ MIRROR if mirrored else rotation


def coarse_correlation(params: np.ndarray, mirrored: bool, moving: np.ndarray, region: tuple[np.ndarray, np.ndarray],
                       spacing_mm: float) -> float:
    """Pearson correlation, over the fixed ``region`` (``registration_region``), of the fixed CT with the coarse
    ``moving`` cube (m, m, m) sampled at ``rigid_matrix(params[:3], mirrored) (p - c) + c + params[3:]`` (p: a fixed
    voxel, c: the cube's centre; ``params[3:]`` in mm, the coarse voxel being ``2 spacing_mm``); linear interpolation."""
    points, values = region
    c = (moving.shape[0] - 1) / 2
    q = rigid_matrix(params[:3], mirrored) @ (points - c) + c + (np.asarray(params[3:]) / (2 * spacing_mm))[:, None]
    x = ndimage.map_coordinates(moving, q, order=1, cval=BACKGROUND_HU)
    x = x - x.mean()
    norm = float(np.linalg.norm(x))
    return float(x @ values) / norm if norm > 0 else 0.0


def refine(moving: Subject, fixed: Subject, mirrored: bool, settings: AuditSettings) -> tuple[np.ndarray, float]:
    """The rigid transform, from the centroid alignment, that maximises ``coarse_correlation`` (Powell, bounded):
    ``(params (6,): rotations in degrees about x, y, z, then translations in mm; the correlation reached)``."""
    def cost(p: np.ndarray) -> float:
        return -coarse_correlation(p, mirrored, moving.coarse_ct, fixed.region, settings.spacing_mm)

    start = np.zeros(6)
    bounds = [(-settings.max_rotation_deg, settings.max_rotation_deg)] * 3 + [
        (-settings.max_translation_mm, settings.max_translation_mm)] * 3
    result = optimize.minimize(cost, start, method="Powell", bounds=bounds,
                               options={"xtol": 0.3, "ftol": 1e-3, "maxfev": 300})
    at_start = cost(start)
    return (result.x, -float(result.fun)) if result.fun < at_start else (start, -at_start)


def moved(moving: Subject, params: np.ndarray, mirrored: bool, spacing_mm: float
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``moving``'s (ct, body, labels) cubes on the fixed cube after the rigid transform ``params``
    (``coarse_correlation``'s convention): CT and body linear (the body becomes a weight in [0, 1]), labels nearest."""
    c = np.full(3, (moving.ct.shape[0] - 1) / 2)
    m = rigid_matrix(params[:3], mirrored)
    offset = c - m @ c + np.asarray(params[3:]) / spacing_mm
    ct = ndimage.affine_transform(moving.ct, m, offset, order=1, cval=BACKGROUND_HU)
    body = ndimage.affine_transform(moving.body, m, offset, order=1, cval=0.0)
    labels = None if moving.labels is None else ndimage.affine_transform(moving.labels, m, offset, order=0, cval=0)
    return ct, body, labels


@dataclass
class VolumeMatch:
    """An audited subject registered onto one training subject.

    Attributes:
        training: index into ``TrainingSet.subjects``.
        params: (6,) the transform (``refine``); mirrored: whether it mirrors.
        ct: CT distance ``1 - r`` (union of bodies, ``spacing_mm`` grid); labels: ``1 - mean Dice`` or None.
    """

    training: int
    params: np.ndarray
    mirrored: bool
    ct: float
    labels: float | None


def candidate_indices(subject: Subject, training: TrainingSet, settings: AuditSettings,
                      exclude: int | None = None) -> np.ndarray:
    """Indices of the ``settings.candidates`` training subjects (never ``exclude``) most correlated with ``subject``
    after centroid alignment, on the coarse grid, the larger of the subject as it is and mirrored."""
    x = np.stack([subject.coarse_ct.ravel(), subject.coarse_ct[::-1].ravel()])
    a = np.stack([subject.coarse_body.ravel(), subject.coarse_body[::-1].ravel()])
    score = union_correlation(x, a, training.coarse_ct, training.coarse_body).max(axis=0)
    if exclude is not None:
        score[exclude] = -np.inf
    order = np.argsort(-score, kind="stable")
    return order[: min(settings.candidates, len(training.subjects) - (exclude is not None))]


def match_volume(subject: Subject, training: TrainingSet, settings: AuditSettings,
                 exclude: int | None = None) -> list[VolumeMatch]:
    """``subject`` registered onto each candidate training subject (with and without the mirror, the better kept),
    and its distances there; sorted by CT distance, nearest first."""
    matches = []
    for i in candidate_indices(subject, training, settings, exclude):
        fixed = training.subjects[i]
        tries = [(refine(subject, fixed, mirrored, settings), mirrored) for mirrored in (False, True)]
        (params, _), mirrored = max(tries, key=lambda t: t[0][1])
        ct, body, labels = moved(subject, params, mirrored, settings.spacing_mm)
        r = union_correlation(ct.reshape(1, -1).astype(np.float64), body.reshape(1, -1).astype(np.float64),
                              fixed.ct.reshape(1, -1).astype(np.float64), fixed.body.reshape(1, -1).astype(np.float64))
        both = labels is not None and fixed.labels is not None
        matches.append(VolumeMatch(int(i), params, mirrored, float(1.0 - r[0, 0]),
                                   labels_distance(labels, fixed.labels) if both else None))
    return sorted(matches, key=lambda m: m.ct)


@dataclass
class SliceMatch:
    """Each usable axial slice of an audited subject and its nearest training slice.

    Attributes:
        distance: (K,) ``1 - r`` inside the union of the two slices' bodies.
        index: (K,) the nearest slice's row in ``TrainingSet.slices`` (its subject: ``owner``, mirrored or not).
    """

    distance: np.ndarray
    index: np.ndarray


def match_slices(subject: Subject, training: TrainingSet, exclude: int | None = None, chunk: int = 1024) -> SliceMatch:
    """Every slice of ``subject`` against every training slice (as it is and mirrored) of every training subject
    but ``exclude``, ``chunk`` training slices at a time (memory: a few (chunk, n * n) float64 arrays)."""
    k = len(subject.slices.z)
    best = SliceMatch(np.full(k, np.inf), np.zeros(k, int))
    x, a = subject.slices.images.astype(np.float64), subject.slices.weights.astype(np.float64)
    for start in range(0, len(training.owner) if k else 0, chunk):
        rows = np.arange(start, min(start + chunk, len(training.owner)))
        if exclude is not None:
            rows = rows[training.owner[rows] != exclude]
        if not len(rows):
            continue
        d = 1.0 - union_correlation(x, a, training.slices.images[rows].astype(np.float64),
                                    training.slices.weights[rows].astype(np.float64))
        j = d.argmin(axis=1)
        nearest = d[np.arange(k), j]
        better = nearest < best.distance
        best.distance[better], best.index[better] = nearest[better], rows[j[better]]
    return best


@dataclass
class SubjectAudit:
    """One audited subject: its volume matches (nearest first), its slice matches and the seconds they took."""

    subject: Subject
    volume: list[VolumeMatch]
    slices: SliceMatch
    seconds: float

    @property
    def labels(self) -> tuple[float | None, int | None]:
        """(smallest labels distance among the registered candidates, its training index), or (None, None)."""
        found = [m for m in self.volume if m.labels is not None]
        best = min(found, key=lambda m: m.labels, default=None)
        return (None, None) if best is None else (best.labels, best.training)


def audit_subject(subject: Subject, training: TrainingSet, settings: AuditSettings,
                  exclude: int | None = None) -> SubjectAudit:
    """The whole pipeline for one subject against the training set (``exclude``: its own index, leave-one-out)."""
    start = time.perf_counter()
    volume = match_volume(subject, training, settings, exclude)
    slices = match_slices(subject, training, exclude)
    return SubjectAudit(subject, volume, slices, time.perf_counter() - start)


def reference_distances(audits: Sequence[SubjectAudit]) -> dict[str, np.ndarray]:
    """The reference subjects' nearest-training distances: ``{"ct": (R,), "labels": (R',) (subjects with labels on
    both sides), "slice": (S,) pooled over all their slices}``."""
    labels = [a.labels[0] for a in audits if a.labels[0] is not None]
    return {"ct": np.array([a.volume[0].ct for a in audits]), "labels": np.array(labels),
            "slice": np.concatenate([a.slices.distance for a in audits])}


def thresholds(reference: dict[str, np.ndarray], percentile: float) -> dict[str, float | None]:
    """``percentile`` of each reference distribution (None where it is empty): distances below it are flagged."""
    return {k: float(np.percentile(v, percentile)) if len(v) else None for k, v in reference.items()}


def distribution(values: np.ndarray) -> dict[str, float] | None:
    """Quantiles (``QUANTILES``) of ``values`` and their count, or None when there are none."""
    if not len(values):
        return None
    q = np.quantile(values, list(QUANTILES.values()))
    return {"n": int(len(values)), **{k: round(float(v), 6) for k, v in zip(QUANTILES, q)}}


def transform_record(subject: Subject, fixed: Subject, match: VolumeMatch, spacing_mm: float) -> dict[str, Any]:
    """The registration found, in world terms: the training subject ``fixed``, mirrored across the sagittal plane
    through its body centroid when ``mirrored``, rotated about that centroid by ``rotation_deg`` (extrinsic x, y, z)
    and moved by ``translation_mm`` (RAS mm), lands on ``subject``."""
    c = np.full(3, (subject.ct.shape[0] - 1) / 2)
    m = rigid_matrix(match.params[:3], match.mirrored)
    sample = np.eye(4)
    sample[:3, :3], sample[:3, 3] = m, c - m @ c + match.params[3:] / spacing_mm
    world = subject.affine @ sample @ np.linalg.inv(fixed.affine)  # fixed world -> subject world
    mirrored = bool(np.linalg.det(world[:3, :3]) < 0)
    rotation = Rotation.from_matrix(world[:3, :3] @ MIRROR if mirrored else world[:3, :3])
    moved_to = (world @ np.append(fixed.centroid_mm, 1.0))[:3]
    return {"mirrored": mirrored, "rotation_deg": [round(float(v), 2) for v in rotation.as_euler("xyz", degrees=True)],
            "translation_mm": [round(float(v), 2) for v in moved_to - fixed.centroid_mm]}


def slice_record(a: SubjectAudit, training: TrainingSet, k: int, threshold: float | None) -> dict[str, Any]:
    """Slice ``k`` of ``a`` and its nearest training slice: heights as indices along S of each subject's RAS grid
    at the audit's spacing (``z``; the file's own index when it is stored RAS at that spacing) and in world mm."""
    j = a.slices.index[k]
    s, t = a.subject, training.subjects[training.owner[j]]
    z, tz = int(s.slices.z[k]), int(training.slices.z[j])
    centre = (s.ct.shape[0] - 1) / 2
    d = float(a.slices.distance[k])
    return {"z": z - int(s.offset[2]), "z_mm": round(float((s.affine @ [centre, centre, z, 1])[2]), 1),
            "training": t.id, "training_z": tz - int(t.offset[2]),
            "training_z_mm": round(float((t.affine @ [centre, centre, tz, 1])[2]), 1),
            "mirrored": bool(training.mirrored[j]), "distance": round(d, 6),
            "flagged": bool(threshold is not None and d < threshold)}


def slice_order(a: SubjectAudit) -> np.ndarray:
    """``a``'s slices, nearest to a training slice first; equal distances (to 1e-6), the larger body first."""
    return np.lexsort((-a.subject.slices.weights.sum(axis=1), np.round(a.slices.distance, 6)))


def subject_record(a: SubjectAudit, training: TrainingSet, limits: dict[str, float | None],
                   reference: dict[str, np.ndarray], spacing_mm: float) -> dict[str, Any]:
    """The report's entry for one synthetic subject (``audit_directories``)."""
    best = a.volume[0]
    labels, labels_training = a.labels
    distances = {"ct": best.ct, "labels": labels}
    flagged_by = [k for k, d in distances.items() if d is not None and limits[k] is not None and d < limits[k]]
    rank = {k: None if d is None or not len(reference[k]) else round(100 * float(np.mean(reference[k] <= d)), 1)
            for k, d in distances.items()}
    below = a.slices.distance < (-np.inf if limits["slice"] is None else limits["slice"])
    order = slice_order(a)
    return {
        "nearest_training": training.subjects[best.training].id,
        "distance": {"ct": round(best.ct, 6), "labels": None if labels is None else round(labels, 6),
                     "labels_training": None if labels_training is None else training.subjects[labels_training].id},
        "reference_percentile": rank,
        "transform": transform_record(a.subject, training.subjects[best.training], best, spacing_mm),
        "flagged": bool(flagged_by), "flagged_by": flagged_by,
        "worst_slice": slice_record(a, training, int(order[0]), limits["slice"]) if len(order) else None,
        "n_slices": int(len(order)),
        "slices_flagged": [int(a.subject.slices.z[k] - a.subject.offset[2]) for k in order if below[k]],
        "seconds": round(a.seconds, 2),
    }


def extremeness(record: dict[str, Any]) -> tuple[float, float]:
    """Sort key, most extreme first: the lower reference percentile (CT or labels), then the CT distance."""
    ranks = [v for v in record["reference_percentile"].values() if v is not None]
    return (min(ranks, default=100.0), record["distance"]["ct"])


def subject_pairs(folder: str | os.PathLike) -> list[dict[str, str]]:
    """The subjects under a SynthRAD-layout ``folder`` that have a CT (``<id>/ct.*``, optional mask and labels)."""
    return find_synthrad_pairs(folder, require=("ct",))


def check_reference(train_dir: str | os.PathLike, train: list[dict[str, str]], held_out_dir: str | os.PathLike | None,
                    held_out: list[dict[str, str]] | None) -> None:
    """Refuse a reference that is not one: a held-out folder that is (or shares a CT with) the training folder, or
    leave-one-out with a single training subject (``MedicalInputError``)."""
    if held_out is None:
        if len(train) < 2:
            raise MedicalInputError(f"{train_dir} holds one training subject; leave-one-out needs two, or give "
                                    "--held-out real subjects.")
        return
    if Path(held_out_dir).resolve() == Path(train_dir).resolve():
        raise MedicalInputError(f"--held-out {held_out_dir} is the training folder; held-out subjects must be real "
                                "subjects the generator did not train on.")
    shared = {str(Path(p["ct"]).resolve()) for p in train} & {str(Path(p["ct"]).resolve()) for p in held_out}
    if shared:
        raise MedicalInputError(f"--held-out {held_out_dir} shares {len(shared)} CT file(s) with the training folder "
                                f"{train_dir}, e.g. {sorted(shared)[0]}.")


def slice_images(a: SubjectAudit, training: TrainingSet) -> tuple[np.ndarray, np.ndarray] | None:
    """(n, n) HU images of ``a``'s worst slice and of its nearest training slice (both recentred, the training one
    mirrored when matched so), for the PNG; None without slices."""
    if not len(a.slices.distance):
        return None
    k = int(slice_order(a)[0])
    n = a.subject.ct.shape[0]
    return a.subject.slices.images[k].reshape(n, n), training.slices.images[a.slices.index[k]].reshape(n, n)


def audit_reference(training: TrainingSet, held_out: list[dict[str, str]] | None,
                    settings: AuditSettings) -> list[SubjectAudit]:
    """The reference audits: each held-out subject against the training set, or each training subject against the
    others (``held_out`` None: leave-one-out). Held-out subjects are read one at a time."""
    if held_out is None:
        return [audit_subject(s, training, settings, exclude=i) for i, s in enumerate(training.subjects)]
    return [audit_subject(load_subject(p, settings), training, settings) for p in held_out]


def summary(records: dict[str, dict[str, Any]], percentile: float) -> dict[str, Any]:
    """The flagged subjects (most extreme first) and slices, beside the fractions expected without memorisation."""
    flagged = [pid for pid, r in records.items() if r["flagged"]]
    n_slices = sum(r["n_slices"] for r in records.values())
    n_flagged = sum(len(r["slices_flagged"]) for r in records.values())
    return {"subjects": flagged, "fraction": len(flagged) / len(records),
            "by_ct": sum("ct" in r["flagged_by"] for r in records.values()),
            "by_labels": sum("labels" in r["flagged_by"] for r in records.values()),
            "slices": n_flagged, "n_slices": n_slices, "slice_fraction": n_flagged / n_slices if n_slices else 0.0,
            "expected_fraction": percentile / 100,
            "expected_note": "without memorisation each measure (CT, labels, slices) flags about this fraction by "
                             "chance; a subject flagged on either CT or labels, up to twice it"}


def audit_directories(synthetic_dir: str | os.PathLike, train_dir: str | os.PathLike, out_json: str | os.PathLike,
                      png: str | os.PathLike | None = None, held_out_dir: str | os.PathLike | None = None,
                      settings: AuditSettings | None = None, pairs_in_png: int = 4) -> dict[str, Any]:
    """Audit a folder of synthetic subjects against the training subjects (SynthRAD layout, ``<id>/ct.*`` with
    optional ``mask`` and ``labels``; any format ``images`` reads). See the module's docstring for the pipeline.

    Args:
        synthetic_dir, train_dir: the synthetic subjects, and the generator's training subjects.
        out_json: the report, written atomically (nothing is written when the input is refused).
        png: draw the worst slice pairs of the ``pairs_in_png`` most extreme synthetic subjects here.
        held_out_dir: real subjects the generator did not train on: the reference distribution. None: leave-one-out
            within the training set (each training subject against the others), which needs two of them.
        settings: ``AuditSettings`` (default: 4 mm, a 256 mm cube, the 5th percentile).

    Returns:
        The report: ``synthetic`` {id: {nearest_training, distance {ct, labels}, reference_percentile, transform,
        flagged, flagged_by, worst_slice, n_slices, slices_flagged, seconds}}, most extreme first; ``flagged`` (the
        summary against ``expected_fraction``); ``thresholds``; ``reference_distances`` (quantiles); ``worst_slices``;
        ``reference`` ("held-out" or "leave-one-out"); the settings and timings.

    Raises:
        MedicalInputError: an empty folder, an unreadable or constant volume, a held-out folder that is the training
            folder, leave-one-out with one training subject, or settings out of range (``AuditSettings.check``).
    """
    settings = settings or AuditSettings()
    settings.check()
    synthetic_pairs, train_pairs = subject_pairs(synthetic_dir), subject_pairs(train_dir)
    held_out = None if held_out_dir is None else subject_pairs(held_out_dir)
    check_reference(train_dir, train_pairs, held_out_dir, held_out)
    start = time.perf_counter()
    training = TrainingSet.of([load_subject(p, settings) for p in train_pairs], settings)
    loaded = time.perf_counter()
    reference_audits = audit_reference(training, held_out, settings)
    reference = reference_distances(reference_audits)
    limits = thresholds(reference, settings.percentile)
    records, images = {}, {}
    for pair in synthetic_pairs:
        a = audit_subject(load_subject(pair, settings), training, settings)
        records[pair["id"]] = subject_record(a, training, limits, reference, settings.spacing_mm)
        images[pair["id"]] = slice_images(a, training)
    records = dict(sorted(records.items(), key=lambda kv: extremeness(kv[1])))
    report: dict[str, Any] = {
        "method": "rigid registration (mirror, 3 rotations, 3 translations) in a physical cube around the body "
                  "centroid; CT 1 - Pearson r inside the union of both bodies, labels 1 - mean Dice, per volume and "
                  "per axial slice; flagged below a percentile of real reference subjects' nearest-training distances",
        "reference": "leave-one-out" if held_out is None else "held-out",
        "synthetic_dir": str(synthetic_dir), "train_dir": str(train_dir),
        "held_out_dir": None if held_out_dir is None else str(held_out_dir),
        "settings": {**dataclasses.asdict(settings), "box_voxels": settings.box_voxels,
                     "correlation_region": "union of both bodies"},
        "n_synthetic": len(records), "n_training": len(training.subjects), "n_reference": len(reference_audits),
        "thresholds": {k: None if v is None else round(v, 6) for k, v in limits.items()},
        "reference_distances": {k: distribution(v) for k, v in reference.items()},
        "reference_subjects": {a.subject.id: {"nearest_training": training.subjects[a.volume[0].training].id,
                                              "ct": round(a.volume[0].ct, 6),
                                              "labels": None if a.labels[0] is None else round(a.labels[0], 6)}
                               for a in reference_audits},
        "flagged": summary(records, settings.percentile),
        "synthetic": records,
        "worst_slices": sorted(({"synthetic": pid, **r["worst_slice"]} for pid, r in records.items() if r["worst_slice"]),
                               key=lambda s: s["distance"])[:20],
        "seconds": {"loading_training": round(loaded - start, 2),
                    "per_reference_subject": round(float(np.mean([a.seconds for a in reference_audits])), 2),
                    "per_synthetic_subject": round(float(np.mean([r["seconds"] for r in records.values()])), 2),
                    "total": round(time.perf_counter() - start, 2)},
    }
    if png is not None:
        report["png"] = str(draw_pairs(records, images, png, pairs_in_png))
    write_json(out_json, report)
    return report


def draw_pairs(records: dict[str, dict[str, Any]], images: dict[str, tuple[np.ndarray, np.ndarray] | None],
               png: str | os.PathLike, count: int) -> Path:
    """The worst slice pair of each of the first ``count`` synthetic subjects of ``records`` (most extreme first)."""
    rows = []
    for pid, r in list(records.items())[:count]:
        w = r["worst_slice"]
        if w is None or images[pid] is None:
            continue
        syn, train = images[pid]
        rows.append((f"synthetic {pid} z {w['z']}\nslice d {w['distance']:.3f}, volume d {r['distance']['ct']:.3f}", syn,
                     f"training {w['training']} z {w['training_z']}" + (" (mirrored)" if w["mirrored"] else ""), train))
    return closest_pairs_panel(rows, png)
