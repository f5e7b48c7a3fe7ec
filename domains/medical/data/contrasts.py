"""How phantom v2's MR is imaged: three contrast families, each a law over scanners (issue 30 §1).

A family draws, per subject, every tissue's mean signal from a range (relative units, white matter about 100-200),
a smooth receive-bias field, and a Rician noise level. The ranges overlap, so the order of tissues changes from
subject to subject (non-monotone: a model cannot learn a fixed intensity-to-HU table), and every family keeps the
physics that makes MR-to-CT hard: cortical bone, teeth and air have almost no signal, so they differ only by the
anatomy around them.

- ``t1`` (training): T1-weighted-like. Fat and fatty marrow bright, white matter above grey, CSF and vitreous dark;
  bias: a smooth log-quadratic field (as v1's scanners) of random strength.
- ``t2`` (held out, for the robustness test set; never drawn in training): T2-weighted-like, another sequence
  family rather than a remap of ``t1``: CSF and vitreous the brightest tissues, grey matter above white, muscle
  dark; bias: a receive-coil profile (a ring of eight Gaussian coil sensitivities), another functional form.
- ``pd`` (calibration only: never trained on, never tested): proton-density-weighted-like. Signal follows water
  content: CSF and vitreous bright but not above fat by much, grey matter above white, fat moderately bright;
  bias: a log-quadratic field, stronger than ``t1``'s. The interval calibration of ``benchmarks/mri2ct_v2.py``
  pools it with ``t1`` subjects so that its intervals account for a change of scanner family, which ``t2``, a
  family neither training nor calibration sees, then tests.

Cortical bone (T2* well under 1 ms) and teeth have no signal a clinical sequence catches: their signal is drawn
within the noise floor, 0 to 2 noise sigmas (``FLOOR_SIGMAS``), in every family, so that on the MR they are air.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .head_anatomy import HeadPose

FLOOR_SIGMAS: dict[str, tuple[float, float]] = {"cortical_bone": (0.0, 2.0), "teeth": (0.0, 2.0)}  # x noise sigma
T1_RANGES: dict[str, tuple[float, float]] = {
    "air": (0.0, 0.0), "skin": (55.0, 115.0), "fat": (170.0, 320.0), "diploe": (90.0, 260.0), "csf": (15.0, 70.0),
    "ventricle": (15.0, 70.0), "grey_matter": (70.0, 130.0), "white_matter": (115.0, 190.0), "sinus_air": (0.0, 0.0),
    "eye": (15.0, 70.0), "mastoid_air": (0.0, 0.0),
}
T2_RANGES: dict[str, tuple[float, float]] = {
    "air": (0.0, 0.0), "skin": (30.0, 70.0), "fat": (110.0, 210.0), "diploe": (60.0, 140.0), "csf": (230.0, 320.0),
    "ventricle": (230.0, 320.0), "grey_matter": (110.0, 160.0), "white_matter": (70.0, 110.0), "sinus_air": (0.0, 0.0),
    "eye": (220.0, 320.0), "mastoid_air": (0.0, 0.0),
}


@dataclass(frozen=True)
class ContrastFamily:
    """A law over MR scanners: tissue signal ranges, the bias field's form and strength, and the noise.

    Attributes:
        ranges: per tissue with a signal, the range each subject's mean signal is drawn from (uniform; relative units);
            the tissues of ``FLOOR_SIGMAS`` are drawn in noise sigmas instead.
        bias: ``quadratic`` (a log-quadratic field in the head frame) or ``coils`` (a ring of receive coils).
        bias_strength: range of the bias field's strength (the log field's spread).
        noise: range of the Rician noise level, as a fraction of the mean signal of the brain's tissues.
    """

    ranges: dict[str, tuple[float, float]]
    bias: str
    bias_strength: tuple[float, float]
    noise: tuple[float, float]


PD_RANGES: dict[str, tuple[float, float]] = {
    "air": (0.0, 0.0), "skin": (70.0, 120.0), "fat": (150.0, 250.0), "diploe": (90.0, 180.0), "csf": (170.0, 260.0),
    "ventricle": (170.0, 260.0), "grey_matter": (140.0, 185.0), "white_matter": (115.0, 150.0),
    "sinus_air": (0.0, 0.0), "eye": (170.0, 260.0), "mastoid_air": (0.0, 0.0),
}


CONTRAST_FAMILIES: dict[str, ContrastFamily] = {
    "t1": ContrastFamily(T1_RANGES, "quadratic", (0.03, 0.15), (0.01, 0.05)),
    "t2": ContrastFamily(T2_RANGES, "coils", (0.15, 0.45), (0.02, 0.06)),
    "pd": ContrastFamily(PD_RANGES, "quadratic", (0.10, 0.30), (0.015, 0.05)),
}
TRAINING_FAMILY, HELD_OUT_FAMILY = "t1", "t2"


def draw_tissue_signals(rng: np.random.Generator, family: ContrastFamily, tissues: dict[int, str]) -> dict[str, float]:
    """One subject's mean MR signal per tissue, drawn uniformly in ``tissues``' order from the family's ranges, or
    for the tissues of ``FLOOR_SIGMAS`` in noise sigmas (multiply by the subject's sigma, ``noise_sigma``)."""
    return {name: float(rng.uniform(*(FLOOR_SIGMAS.get(name) or family.ranges[name]))) for name in tissues.values()}


def noise_sigma(signals: dict[str, float], noise_fraction: float) -> float:
    """The Rician noise's sigma: ``noise_fraction`` of the brain's mean signal (grey and white matter)."""
    return noise_fraction * 0.5 * (signals["grey_matter"] + signals["white_matter"])


def at_noise_floor(signals: dict[str, float], sigma: float) -> dict[str, float]:
    """``signals`` with the ``FLOOR_SIGMAS`` tissues (drawn in noise sigmas) turned into signal units."""
    return {name: value * sigma if name in FLOOR_SIGMAS else value for name, value in signals.items()}


def quadratic_bias(rng: np.random.Generator, pose: HeadPose, strength: float) -> np.ndarray:
    """A smooth multiplicative field (X, Y, Z) float32: exp of a quadratic in the head frame (100 mm units) whose
    nine coefficients are N(0, strength), clipped to +-3 strength."""
    u = [qa / 100.0 for qa in pose.frame]
    basis = [u[0], u[1], u[2], u[0] * u[1], u[1] * u[2], u[0] * u[2], u[0] ** 2, u[1] ** 2, u[2] ** 2]
    log_bias = sum(np.float32(c) * b for c, b in zip(rng.normal(0.0, strength, len(basis)), basis))
    return np.exp(np.clip(log_bias, -3 * strength, 3 * strength)).astype(np.float32)


def coil_bias(rng: np.random.Generator, pose: HeadPose, strength: float) -> np.ndarray:
    """A receive-coil profile (X, Y, Z) float32: eight coils on a ring 110 mm from the head's axis at a random
    height and rotation, each a Gaussian sensitivity 70-110 mm wide with its own gain; the sum's log is scaled to
    ``strength`` and centred, so the field is near 1 on average and brightest near the coils."""
    x, y, z = pose.frame
    angle0, height = rng.uniform(0, 2 * np.pi), rng.uniform(-30.0, 30.0)
    total = np.zeros(pose.shape, np.float32)
    for c in range(8):
        angle = angle0 + 2 * np.pi * c / 8
        cx, cy, width, gain = 110 * np.cos(angle), 110 * np.sin(angle), rng.uniform(70.0, 110.0), rng.uniform(0.6, 1.4)
        total += np.float32(gain) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - height) ** 2) / (2 * width**2))
    log_total = np.log(total + 1e-6)
    log_total = (log_total - log_total.mean()) / max(float(log_total.std()), 1e-6)
    return np.exp(np.clip(strength * log_total, -1.0, 1.0)).astype(np.float32)


def bias_field(rng: np.random.Generator, pose: HeadPose, family: ContrastFamily) -> np.ndarray:
    """The family's bias field for one subject (``quadratic_bias`` or ``coil_bias``), strength drawn first."""
    strength = float(rng.uniform(*family.bias_strength))
    return (quadratic_bias if family.bias == "quadratic" else coil_bias)(rng, pose, strength)


def rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """The magnitude of ``signal`` plus complex Gaussian noise of std ``sigma`` per channel, (X, Y, Z) float32."""
    sigma = np.float32(sigma)
    real = signal + sigma * rng.standard_normal(signal.shape, np.float32)
    return np.sqrt(real**2 + (sigma * rng.standard_normal(signal.shape, np.float32)) ** 2)
