"""Head phantom v2 (issue 30 §1): MR-to-CT where it is hard. ``sci-diffusion phantom --version 2``.

What v1 (``phantom.py``, still the default, unchanged) leaves out, v2 has:

- **Bone and air alike on MR.** Cortical bone, teeth and air all sit at the MR's noise floor (``contrasts.py``), so
  a voxel's MR value cannot tell them apart (their histograms overlap; v1 kept them more than 10 noise sigmas
  apart); only the anatomy around a voxel can.
- **The hard anatomy** (``head_anatomy_v2.py``): mastoid air cells, frontal, maxillary and sphenoid sinuses, the
  nasal cavity, orbits with their eyes, teeth and the mandible; each marked in ``structures.nii.gz``.
- **Misregistration.** The MR is the moving image of a registered pair, as in SynthRAD (MR registered onto the
  CT grid): it shows the anatomy moved by a rigid residual (a rotation of at most 2 degrees about the head centre,
  a shift of at most 1.5 mm) and a smooth deformation of at most 2 mm (wavelengths 60-150 mm, the size of a
  residual after rigid registration of a head and neck). The CT, the tissue labels and the structure map share the
  reference anatomy; the body mask follows the MR (SynthRAD's recipe) joined with the labels. Rotating by 2
  degrees moves a point 100 mm from the centre by 3.5 mm (the crown: the largest displacement there is about 7 mm)
  and one at the bottom of the neck (up to 180 mm below the centre) by 6.3 mm, so no voxel moves more than 10 mm.
  SynthRAD2023 registers brain MR to CT rigidly and states no residual; these are our sizes, recorded per subject
  in ``dataset.json`` (``misregistration``) so that they can be checked.
- **A variable field of view**: 192 x 224 mm in-plane (as v1: axial slices keep one size) by a height of 200-250 mm
  whose top lies 70-96 mm above the head centre (``head_anatomy_v2.FOV_*``): the neck's coverage varies and the
  crown is sometimes cut.
- **Randomised contrasts**: each subject draws its tissue signals within a family's ranges (order between tissues
  not fixed), a bias field and a noise level; ``contrast="t1"`` for training, ``"t2"`` (another family) held out.

The CT is imaged as v1's (per-subject tissue HU within docs/protocols.md §2's ranges, texture, noise, integer HU,
-1000 outside the mask); teeth 1800-2800 HU, the eye's vitreous 5-15 HU, mastoid air cells -1000 HU. A seed's
anatomy, CT and misregistration do not depend on the contrast family.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from sci_diffusion.atomic import write_json

from ..io.nifti import MedicalInputError, save_volume
from .contrasts import CONTRAST_FAMILIES, at_noise_floor, bias_field, draw_tissue_signals, noise_sigma, rician
from .head_anatomy import HeadPose, smooth_noise, voxel_spacing
from .head_anatomy_v2 import STRUCTURES, TISSUE_LABELS_V2, draw_anatomy_v2, tissue_fractions_v2
from .phantom import CT_BACKGROUND_HU, CT_MAX_HU, CT_MIN_HU, TISSUE_CT_HU, body_mask_from_mr, patient_id

TISSUE_CT_HU_V2: dict[str, tuple[float, float]] = {
    **TISSUE_CT_HU, "teeth": (1800.0, 2800.0), "eye": (5.0, 15.0), "mastoid_air": (-1000.0, -1000.0)}
BONY = ("cortical_bone", "diploe", "teeth")  # their texture is 5 % of their HU, the others' 2 HU
MAX_ROTATION_DEG, MAX_SHIFT_MM, MAX_DEFORMATION_MM = 2.0, 1.5, 2.0


@dataclass(frozen=True)
class Misregistration:
    """Where the MR shows the anatomy: at world position w the MR sees what the CT shows at
    ``R (w - c) + c + shift + deformation(w)``, c the head centre (world 0 in v2).

    Attributes:
        rotvec: the rotation R as a rotation vector (radians), at most ``MAX_ROTATION_DEG`` long.
        shift_mm: (3,) at most ``MAX_SHIFT_MM`` long.
        deformation_mm: the deformation's largest length on the grid, at most ``MAX_DEFORMATION_MM``.
        deformation: (3, X, Y, Z) float32 mm, the smooth field itself (not recorded in JSON).
    """

    rotvec: np.ndarray
    shift_mm: np.ndarray
    deformation_mm: float
    deformation: np.ndarray = field(repr=False)

    def record(self) -> dict[str, Any]:
        """What ``dataset.json`` keeps: the rotation (degrees and axis), the shift and the deformation's size."""
        angle = float(np.linalg.norm(self.rotvec))
        return {"rotation_deg": round(float(np.degrees(angle)), 4),
                "rotation_axis": (self.rotvec / angle if angle > 0 else np.array([0.0, 0.0, 1.0])).round(4).tolist(),
                "shift_mm": np.round(self.shift_mm, 4).tolist(), "deformation_mm": round(self.deformation_mm, 4)}


def draw_misregistration(rng: np.random.Generator, pose: HeadPose) -> Misregistration:
    """A rigid residual (angle uniform in [0, 2] degrees about a uniform axis; shift uniform in length up to 1.5 mm,
    uniform direction) and a smooth deformation (per axis, two plane waves of wavelength 60-150 mm, scaled so that
    its largest length on the grid is uniform in [0.5, 2] mm), drawn in this order."""
    axis = rng.normal(size=3)
    rotvec = axis / np.linalg.norm(axis) * np.radians(rng.uniform(0.0, MAX_ROTATION_DEG))
    direction = rng.normal(size=3)
    shift = direction / np.linalg.norm(direction) * rng.uniform(0.0, MAX_SHIFT_MM)
    x, y, z = pose.frame
    field_mm = np.zeros((3, *pose.shape), np.float32)
    for a in range(3):
        for _ in range(2):
            k = rng.normal(size=3)
            k = k / np.linalg.norm(k) * 2 * np.pi / rng.uniform(60.0, 150.0)
            field_mm[a] += np.sin(k[0] * x + k[1] * y + k[2] * z + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    size = rng.uniform(0.5, MAX_DEFORMATION_MM)
    field_mm *= np.float32(size / float(np.sqrt((field_mm**2).sum(axis=0)).max()))
    return Misregistration(rotvec, shift, float(size), field_mm)


def displacement_mm(affine: np.ndarray, mis: Misregistration) -> np.ndarray:
    """(3, X, Y, Z) float32: for every voxel of the grid of ``affine`` (diagonal, RAS+ mm; the shape is the
    deformation's), where (mm, world axes) the MR looks relative to the voxel itself."""
    shape = mis.deformation.shape[1:]
    world = np.stack(np.meshgrid(*[affine[a, a] * np.arange(n) + affine[a, 3] for a, n in enumerate(shape)],
                                 indexing="ij")).astype(np.float32)
    rotated = np.einsum("ij,j...->i...", Rotation.from_rotvec(mis.rotvec).as_matrix().astype(np.float32), world)
    return rotated - world + mis.shift_mm.astype(np.float32)[:, None, None, None] + mis.deformation


def warp(volume: np.ndarray, affine: np.ndarray, mis: Misregistration) -> np.ndarray:
    """``volume`` (X, Y, Z) on the grid of ``affine`` as the misregistered MR sees it: sampled (linearly, edges
    extended) at every voxel moved by ``displacement_mm``."""
    spacing = np.diag(affine)[:3].astype(np.float32)[:, None, None, None]
    coords = np.indices(volume.shape, dtype=np.float32) + displacement_mm(affine, mis) / spacing
    return ndimage.map_coordinates(volume, coords, order=1, mode="nearest").astype(np.float32)


def tissue_ct(rng: np.random.Generator, pose: HeadPose, fractions: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Noise-free CT (X, Y, Z) float32 HU: each tissue's per-subject mean (``TISSUE_CT_HU_V2``) with texture,
    weighted by its fractions; and the means. Draws the texture, then the means in label order."""
    texture = smooth_noise(rng, pose.shape, sigma_vox=3.0 / pose.voxel_mm)
    ct = np.zeros(pose.shape, np.float32)
    means = {}
    for index, name in TISSUE_LABELS_V2.items():
        means[name] = hu = float(rng.uniform(*TISSUE_CT_HU_V2[name]))
        ct += fractions[index] * (hu + (0.05 * abs(hu) if name in BONY else 2.0) * texture)
    return ct, means


def tissue_mr(rng: np.random.Generator, pose: HeadPose, fractions: np.ndarray, signals: dict[str, float]) -> np.ndarray:
    """Noise-free, bias-free MR (X, Y, Z) float32: the tissues' ``signals`` with a 3 % texture, weighted by their
    fractions (partial volume)."""
    texture = smooth_noise(rng, pose.shape, sigma_vox=3.0 / pose.voxel_mm)
    mr = np.zeros(pose.shape, np.float32)
    for index, name in TISSUE_LABELS_V2.items():
        mr += fractions[index] * (signals[name] * (1.0 + 0.03 * texture))
    return mr


@dataclass
class PhantomV2:
    """One v2 subject on one RAS grid: ``mr`` float32, ``ct`` float32 integer HU, ``mask`` float32 {0, 1},
    ``labels`` uint8 (keys of ``TISSUE_LABELS_V2``), ``structures`` uint8 (keys of ``STRUCTURES``), all (X, Y, Z);
    ``affine`` (4, 4) RAS+ mm; ``record``: the subject's draws (field of view, contrast, tissue signals and HU, noise,
    misregistration) for ``dataset.json``; ``misregistration``: the MR's (``displacement_mm`` gives its field)."""

    mr: np.ndarray
    ct: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    structures: np.ndarray
    affine: np.ndarray
    record: dict[str, Any]
    misregistration: Misregistration


def make_head_phantom_v2(rng: np.random.Generator, spacing_mm: float | Sequence[float] = 2.0, contrast: str = "t1",
                         misregistration: Misregistration | None = None) -> PhantomV2:
    """Draw one v2 subject (module docstring).

    The draws, in order: the anatomy (``head_anatomy_v2.draw_anatomy_v2``), the CT's tissues and noise, the
    misregistration (``draw_misregistration``; drawn and then replaced when ``misregistration`` is given, so a test
    can fix it without changing the subject), then the MR's tissue signals, texture, bias field, gain and noise
    (``contrasts.py``: the noise level first, since bone and teeth are drawn in its sigmas). So a seed's anatomy, CT
    and misregistration are the same in every contrast family.

    Args:
        rng: the source of all randomness.
        spacing_mm: isotropic voxel size, or one per axis.
        contrast: a key of ``contrasts.CONTRAST_FAMILIES``: ``t1`` (training) or ``t2`` (held out).
        misregistration: use this instead of the drawn one (``Misregistration``), e.g. a pure shift.
    """
    if contrast not in CONTRAST_FAMILIES:
        raise ValueError(f"contrast must be one of {sorted(CONTRAST_FAMILIES)}, got {contrast!r}.")
    family = CONTRAST_FAMILIES[contrast]
    spacing = voxel_spacing(spacing_mm)
    pose, anatomy, face = draw_anatomy_v2(rng, spacing)
    fractions, structures = tissue_fractions_v2(pose, anatomy, face)
    labels = np.argmax(fractions, axis=0).astype(np.uint8)
    ct, ct_means = tissue_ct(rng, pose, fractions)
    ct_sigma = float(rng.uniform(4.0, 10.0))
    ct = np.clip(np.round(ct + np.float32(ct_sigma) * rng.standard_normal(ct.shape, np.float32)), CT_MIN_HU, CT_MAX_HU)
    drawn = draw_misregistration(rng, pose)
    mis = drawn if misregistration is None else misregistration
    noise = float(rng.uniform(*family.noise))
    signals = draw_tissue_signals(rng, family, TISSUE_LABELS_V2)
    sigma = noise_sigma(signals, noise)
    signals = at_noise_floor(signals, sigma)
    mr = warp(tissue_mr(rng, pose, fractions, signals), pose.affine, mis)
    gain = bias_field(rng, pose, family) * np.float32(rng.uniform(0.8, 1.25))
    mr = rician(rng, mr * gain, sigma * float(np.mean(gain)))
    mask = body_mask_from_mr(mr, spacing) | (labels > 0)
    ct = np.where(mask, ct, CT_BACKGROUND_HU).astype(np.float32)
    record = {"version": 2, "contrast": contrast, "shape": list(pose.shape),
              "field_of_view_mm": np.round(np.asarray(pose.shape) * spacing, 2).tolist(),
              "misregistration": mis.record(), "mr_signals": {k: round(v, 3) for k, v in signals.items()},
              "mr_noise_fraction": round(noise, 5), "mr_noise_sigma": round(sigma, 4),
              "ct_hu": {k: round(v, 2) for k, v in ct_means.items()},
              "ct_noise_hu": round(ct_sigma, 3)}
    return PhantomV2(mr.astype(np.float32), ct, mask.astype(np.float32), labels, structures, pose.affine, record, mis)


def ct_as_the_mr_sees_it(subject: PhantomV2) -> np.ndarray:
    """The registration floor of a subject: its CT (X, Y, Z, HU) moved with the MR's misregistration (``warp``,
    linear), CT background outside the body mask.

    It is the CT a model that read the MR's anatomy perfectly would predict; scored against the CT, it shows how
    much error the misregistration alone leaves (at the edges of thin structures: the sinuses, the nasal cavity,
    cortical bone), which no model trained on these pairs can remove. ``benchmarks/mri2ct_v2.py`` reports it."""
    moved = warp(subject.ct, subject.affine, subject.misregistration)
    return np.where(subject.mask > 0, moved, CT_BACKGROUND_HU).astype(np.float32)


def write_phantom_dataset_v2(out_dir: str | os.PathLike, subjects: int, spacing_mm: float | Sequence[float] = 2.0,
                             seed: int = 0, contrast: str = "t1", centre: str = "A") -> list[dict[str, str]]:
    """Write ``subjects`` v2 phantoms as ``<out_dir>/<id>/{mr,ct,mask,labels,structures}.nii.gz``.

    Subject i is drawn from ``np.random.default_rng([seed, i])`` and named ``1B<centre><i:03d>`` (SynthRAD's ids:
    give sets that are pooled, e.g. calibration subjects of two contrast families, different centres).
    ``dataset.json`` records the version, the contrast family, the seed, the spacing, the tissue labels, the
    structures and each subject's draws (its misregistration among them). Every image says SYNTHETIC.

    Returns:
        One dict per subject with keys id, mr, ct, mask, labels, structures (paths as str), in id order.

    Raises:
        MedicalInputError: fewer than one subject, or an unknown contrast family.
    """
    if subjects < 1:
        raise MedicalInputError(f"--subjects must be at least 1, got {subjects}.")
    if contrast not in CONTRAST_FAMILIES:
        raise MedicalInputError(f"--contrast must be one of {', '.join(sorted(CONTRAST_FAMILIES))}, got {contrast!r}.")
    out = Path(out_dir)
    pairs, records = [], {}
    for i in range(1, subjects + 1):
        subject = make_head_phantom_v2(np.random.default_rng([seed, i]), spacing_mm, contrast)
        pid = patient_id(i, centre=centre)
        folder = out / pid
        folder.mkdir(parents=True, exist_ok=True)
        pair = {"id": pid}
        for name, array in (("mr", subject.mr), ("ct", subject.ct.astype(np.int16)), ("mask", subject.mask.astype(np.uint8)),
                            ("labels", subject.labels), ("structures", subject.structures)):
            path = folder / f"{name}.nii.gz"
            save_volume(array, subject.affine, path, description=f"SYNTHETIC sci-diffusion head phantom v2 {pid} {name}")
            pair[name] = str(path)
        pairs.append(pair)
        records[pid] = subject.record
    write_json(out / "dataset.json", {
        "synthetic": True, "generator": "sci_diffusion_medical.data.phantom_v2.make_head_phantom_v2", "version": 2,
        "contrast": contrast, "seed": seed, "spacing_mm": voxel_spacing(spacing_mm).tolist(),
        "subjects": [p["id"] for p in pairs], "tissue_labels": {str(k): v for k, v in TISSUE_LABELS_V2.items()},
        "structures": {str(k): v for k, v in STRUCTURES.items()}, "records": records,
        "layout": "SynthRAD2023 Task 1: <id>/{mr,ct,mask,labels,structures}.nii.gz"})
    return pairs
