"""Paired MR/CT head phantoms in the SynthRAD2023 Task 1 layout.

A subject is a head built from nested, smoothly deformed surfaces in a head frame
(x: left->right, y: posterior->anterior, z: inferior->superior, millimetres), painted
tissue by tissue with partial-volume fractions (``head_anatomy.py``), then imaged twice (here):

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
from monai.transforms import FillHoles, KeepLargestConnectedComponent
from scipy import ndimage
from skimage.filters import threshold_otsu

from sci_diffusion.atomic import write_json

from ..io.nifti import save_volume
from .head_anatomy import (
    TISSUE_LABELS,
    HeadPose,
    draw_anatomy,
    draw_head_pose,
    smooth_noise,
    tissue_fractions,
    voxel_spacing,
)

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

CT_MIN_HU, CT_MAX_HU = -1024.0, 3071.0  # what a 12-bit CT scanner stores
CT_BACKGROUND_HU = -1000.0  # SynthRAD sets the CT outside the mask to this


def body_mask_from_mr(mr: np.ndarray, spacing_mm: float | Sequence[float] = 1.0) -> np.ndarray:
    """Body outline (X, Y, Z) bool from an MR volume, as SynthRAD2023 built its masks.

    Otsu threshold, closing (about 4 mm), dilation (about 2 mm), then hole filling in 3-D
    and in every axial slice (MONAI ``FillHoles``), because the neck leaves the field of view open at the bottom.
    The largest connected component is kept (MONAI ``KeepLargestConnectedComponent``). Connectivity is by faces
    throughout, as scipy's defaults were before MONAI's transforms replaced them (the same masks, voxel for voxel).

    Not MONAI's ``ForegroundMask``: it is made for RGB pathology slides (foreground at or below the threshold), so
    an MR must be inverted first, and Otsu's threshold of the inverted histogram falls one bin away: about 250 of
    the 45,000 body voxels of a 4 mm phantom change, and the phantom's CT with them (``test_phantom.py``'s
    ``test_foreground_mask_would_move_the_otsu_threshold``). skimage's ``threshold_otsu``, which ``ForegroundMask``
    calls, is used directly.
    """
    spacing = voxel_spacing(spacing_mm)
    mask = mr > threshold_otsu(mr)

    def ball(radius_mm: float) -> np.ndarray:
        half = np.maximum(np.round(radius_mm / spacing).astype(int), 1)
        grid = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
        return sum((g * s) ** 2 for g, s in zip(grid, spacing)) <= radius_mm**2 + 1e-6

    pad = 3  # room for the closing at the border
    mask = np.pad(mask, pad)
    mask = ndimage.binary_closing(mask, ball(max(4.0, spacing.max())))[pad:-pad, pad:-pad, pad:-pad]
    mask = ndimage.binary_dilation(mask, ball(max(2.0, spacing.max())))[None].astype(np.uint8)  # (1, X, Y, Z)
    fill = FillHoles(connectivity=1)
    mask = np.asarray(fill(mask))
    for z in range(mask.shape[3]):
        mask[:, :, :, z] = np.asarray(fill(mask[:, :, :, z]))
    return np.asarray(KeepLargestConnectedComponent(connectivity=1)(mask))[0].astype(bool)


# ----- imaging: CT and MR of the tissue fractions ------------------------------------------------
def tissue_images(rng: np.random.Generator, pose: HeadPose, fractions: np.ndarray,
                  scanner: Scanner) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free ``(ct HU, mr T1)`` (X, Y, Z) float32: each tissue's per-subject mean, with texture within the
    tissue, weighted by its fractions. Draws the two textures, then each tissue's CT and T1 mean in label order."""
    ct_texture = smooth_noise(rng, pose.shape, sigma_vox=3.0 / pose.voxel_mm)
    mr_texture = smooth_noise(rng, pose.shape, sigma_vox=3.0 / pose.voxel_mm)
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

    The steps, each drawing from ``rng`` in turn: the pose (``head_anatomy.draw_head_pose``), the anatomy
    (``head_anatomy.draw_anatomy``, painted into tissue fractions by ``head_anatomy.tissue_fractions``), then
    the imaging here (``tissue_images``, ``mr_scanner``, the body mask, ``ct_scanner``).

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
    spacing = voxel_spacing(spacing_mm)
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
            "spacing_mm": voxel_spacing(spacing_mm).tolist(),
            "subjects": [p["id"] for p in pairs],
            "tissue_labels": {str(k): v for k, v in TISSUE_LABELS.items()},
            "layout": "SynthRAD2023 Task 1: <id>/{mr,ct,mask,labels}.nii.gz",
        },
    )
    return pairs
