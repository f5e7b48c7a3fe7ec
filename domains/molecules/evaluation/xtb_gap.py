"""A molecule's HOMO-LUMO gap by GFN2-xTB, on QM9's DFT scale (issue 29 §3: physics in the loop).

QM9's gap is B3LYP/6-31G(2df,p); GFN2-xTB's orbital gap is a different quantity on another scale (water: 14.5 eV by
xTB, 9.8 eV by DFT), but the two rise and fall together. A straight line fitted on real QM9 molecules
(:func:`fit_gap_scale`) maps one onto the other; ``benchmarks/xtb_gap_scale.py`` fits it on molecules of Da (the
classifier's half, never the generator's targets) and checks it on molecules of the test split, and writes it to
``checkpoints/xtb_gap_scale.json`` (:data:`SCALE_PATH`), with its correlation r and held-out MAE.

The gap is the lowest unoccupied minus the highest occupied orbital energy of one GFN2-xTB single point of a
neutral closed-shell molecule (tblite, the ``[xtb]`` extra), in eV. A molecule with an odd electron count, non-finite
coordinates or an SCF that fails has no gap (None), as in the geometry check (``geometry.py``).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sci_diffusion.atomic import write_json

from .geometry import BOHR_PER_ANGSTROM, odd_electrons, silent_calculator, tblite_calculator_class

HARTREE_TO_EV = 27.211386245988
SCALE_PATH = Path(__file__).resolve().parents[1] / "checkpoints" / "xtb_gap_scale.json"
SCALE_FORMAT = "sci-diffusion GFN2-xTB gap to QM9 DFT gap, linear v1"


def xtb_gap_ev(z, positions, charge: int = 0, threads: int | None = 1) -> float | None:
    """GFN2-xTB HOMO-LUMO gap of one molecule, eV; None when it has none (module docstring).

    Args:
        z: [N] atomic numbers.
        positions: [N, 3] Angstrom.
        charge: total charge (0: QM9's molecules are neutral); the spin is a singlet.
        threads: tblite's OpenMP threads during the single point (None: the process's setting).

    Raises:
        XtbUnavailableError: tblite is not installed.
    """
    calculator_class = tblite_calculator_class()  # raises XtbUnavailableError, in one sentence, without the [xtb] extra
    # tblite and threadpoolctl: the optional [xtb] extra, loaded only when a gap is asked for
    from tblite.exceptions import TBLiteRuntimeError, TBLiteValueError
    from threadpoolctl import threadpool_limits

    z = np.asarray(z, dtype=np.int32)
    positions = np.asarray(positions, dtype=np.float64)
    if odd_electrons(z, charge) or not np.isfinite(positions).all():
        return None
    try:
        with threadpool_limits(limits=threads):
            result = silent_calculator(calculator_class, z, positions * BOHR_PER_ANGSTROM, charge).singlepoint()
    except (TBLiteRuntimeError, TBLiteValueError):
        return None
    energies, occupations = np.asarray(result.get("orbital-energies")), np.asarray(result.get("orbital-occupations"))
    occupied = occupations > 1.0  # closed shell: 2 per occupied orbital, 0 above
    if not occupied.any() or occupied.all():
        return None
    gap = float(energies[~occupied].min() - energies[occupied].max()) * HARTREE_TO_EV
    return gap if math.isfinite(gap) else None


@dataclass(frozen=True)
class GapScale:
    """``dft_gap ~ slope * xtb_gap + intercept`` (eV), fitted on real QM9 molecules.

    Attributes:
        slope, intercept: the least-squares line.
        r: Pearson correlation of the xTB and DFT gaps on the held-out check molecules.
        mae_ev: mean absolute error of the mapped gap against the DFT gap on the check molecules, eV.
        fit_molecules, check_molecules: how many molecules the line was fitted and checked on.
        provenance: how it was made (the command, the molecules).
    """

    slope: float
    intercept: float
    r: float
    mae_ev: float
    fit_molecules: int
    check_molecules: int
    provenance: str = ""
    format: str = SCALE_FORMAT

    def to_dft(self, xtb_gap: float | None) -> float | None:
        """The xTB gap mapped onto the DFT scale, eV (None stays None)."""
        return None if xtb_gap is None else self.slope * xtb_gap + self.intercept

    def save(self, path: str | os.PathLike = SCALE_PATH) -> None:
        write_json(path, asdict(self))


def fit_gap_scale(xtb: np.ndarray, dft: np.ndarray) -> tuple[float, float]:
    """``(slope, intercept)`` of the least-squares line ``dft ~ slope * xtb + intercept`` over paired gaps (eV)."""
    slope, intercept = np.polyfit(np.asarray(xtb, np.float64), np.asarray(dft, np.float64), 1)
    return float(slope), float(intercept)


def check_gap_scale(slope: float, intercept: float, xtb: np.ndarray, dft: np.ndarray) -> tuple[float, float]:
    """``(r, MAE eV)`` of the line on other paired gaps: Pearson r of xTB and DFT, and the mapped gap's MAE."""
    xtb, dft = np.asarray(xtb, np.float64), np.asarray(dft, np.float64)
    return float(np.corrcoef(xtb, dft)[0, 1]), float(np.abs(slope * xtb + intercept - dft).mean())


def read_gap_scale(path: str | os.PathLike = SCALE_PATH) -> GapScale:
    """The fitted line (default: the shipped one).

    Raises:
        ValueError: not a file written by :meth:`GapScale.save`, in one sentence naming it.
    """
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        raise ValueError(f"{path} is not a readable xTB gap scale.") from None
    if not isinstance(record, dict) or record.get("format") != SCALE_FORMAT:
        raise ValueError(f"{path} is not an xTB gap scale (written by benchmarks/xtb_gap_scale.py).")
    return GapScale(**record)
