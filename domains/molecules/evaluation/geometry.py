"""The geometry check: how much GFN2-xTB energy a molecule gives up when it is relaxed (issue 28 §1).

A molecule generated close to an energy minimum barely moves when it is relaxed; one generated with
strained bonds and angles drops far. The number is ``E(start) - E(relaxed)`` in kcal/mol, summarised
over a set of molecules by its median and 90th percentile (as SemlaFlow and Megalodon report it on
GEOM-Drugs: medians 32.96 and 3.17 kcal/mol). Real QM9 geometries (DFT minima, B3LYP) give the floor,
since GFN2-xTB's minima sit a little off B3LYP's: a median of 1.27 kcal/mol and a 90th percentile of 2.07
on the first 100 molecules of the test split (:func:`qm9_relaxation_floor`).

GFN2-xTB comes from ``tblite`` (``pip install 'sci-diffusion[xtb]'``), which works in Bohr and
Hartree; everything here takes and returns Angstrom and kcal/mol. Every molecule is neutral (total
charge 0, as QM9's are) and closed-shell: a molecule with an odd number of electrons is reported as
unscorable rather than given an unpaired electron, because a radical's energy says nothing about a
closed-shell geometry and the issue counts such molecules as failures.

The relaxation is L-BFGS (scipy's L-BFGS-B, no bounds) on the Cartesian coordinates with tblite's
analytic gradient. It has converged when the norm of the gradient over all 3N components is at most
``GRADIENT_NORM_TOLERANCE`` = 1e-3 Hartree/Bohr (xtb's ``--opt normal`` gradient threshold), within
``MAX_STEPS`` = 500 L-BFGS steps (at most 1,000 energy evaluations). Tightening the threshold tenfold
changed a molecule's drop by a median 0.003 kcal/mol (33 molecules, real and generated), at most 0.8, where
a floppy molecule slid on along a torsion to a lower minimum: far below the differences compared here.

Threads: tblite runs OpenMP and scipy's optimiser runs BLAS, both limited to one thread while a molecule
relaxes (``relax_molecule``'s ``threads``; the study runs one thread per process). On one thread a
QM9-sized molecule took 0.20 CPU-s (100 real test molecules) and 0.61 CPU-s (68 scorable molecules of the
bundled model; an odd-electron one costs nothing); each result records its own wall and CPU seconds.
"""
from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata

import numpy as np
from tqdm.auto import tqdm

from ..data.qm9 import edm_split, load_qm9

HARTREE_TO_KCAL_PER_MOL = 627.509474
BOHR_PER_ANGSTROM = 1.0 / 0.529177210903
GRADIENT_NORM_TOLERANCE = 1e-3  # Hartree/Bohr, over all 3N components
MAX_STEPS = 500
METHOD = "GFN2-xTB"

# Why a molecule cannot be scored; the summary counts each.
ODD_ELECTRONS = "odd electron count"
FAILED_CALCULATION = "failed calculation"
NON_FINITE = "non-finite result"
NOT_CONVERGED = "no convergence"
REASONS = (ODD_ELECTRONS, FAILED_CALCULATION, NON_FINITE, NOT_CONVERGED)

INSTALL_HINT = "pip install 'sci-diffusion[xtb]'"


class XtbUnavailableError(ImportError):
    """tblite is not installed (or its library does not load); the message says how to install it."""


@dataclass(frozen=True)
class Relaxation:
    """The geometry check of one molecule.

    Attributes:
        drop_kcal_per_mol: ``E(start) - E(relaxed)``, kcal/mol (>= 0 up to SCF noise); None when unscorable.
        energy_start: GFN2-xTB energy of the given geometry, Hartree; None if it could not be computed.
        energy_relaxed: energy at the relaxed geometry, Hartree; None when unscorable.
        relaxed_positions: [N, 3] Angstrom; None when unscorable.
        gradient_norm: norm of the final gradient, Hartree/Bohr; None if no gradient was computed.
        steps: L-BFGS steps taken.
        seconds: wall-clock seconds for this molecule (both single points and the relaxation).
        cpu_seconds: CPU seconds of the process for this molecule (all its threads).
        reason: one of ``REASONS`` when the molecule cannot be scored, else None.
    """

    drop_kcal_per_mol: float | None
    energy_start: float | None
    energy_relaxed: float | None
    relaxed_positions: np.ndarray | None
    gradient_norm: float | None
    steps: int
    seconds: float
    cpu_seconds: float
    reason: str | None = None

    @property
    def scored(self) -> bool:
        return self.reason is None


class _NonFiniteEnergy(Exception):
    """Raised from inside the optimiser's objective to stop it at a NaN or infinite energy or gradient."""


def tblite_calculator_class():
    """tblite's ``Calculator`` class, once tblite and threadpoolctl (the [xtb] extra) are known to load.

    Raises:
        XtbUnavailableError: tblite or threadpoolctl is not installed, or tblite's compiled library does not load.
    """
    try:
        # tblite, threadpoolctl: the optional [xtb] extra, needed only by the geometry check
        import threadpoolctl  # noqa: F401
        from tblite.interface import Calculator
    except (ImportError, OSError):
        raise XtbUnavailableError("The GFN2-xTB geometry check needs tblite (the [xtb] extra), which is not installed: "
                                  f"{INSTALL_HINT}.") from None
    return Calculator


def relax_molecule(z, positions, charge: int = 0, gradient_tolerance: float = GRADIENT_NORM_TOLERANCE,
                   max_steps: int = MAX_STEPS, threads: int | None = 1) -> Relaxation:
    """Relax one molecule with GFN2-xTB and measure the energy it gives up.

    Args:
        z: [N] atomic numbers.
        positions: [N, 3] Angstrom.
        charge: total charge in elementary charges (0 for the geometry check); the spin is always a singlet.
        gradient_tolerance: converged when the gradient's norm is at most this, Hartree/Bohr.
        max_steps: L-BFGS steps allowed before the molecule counts as not converged.
        threads: threads for tblite's OpenMP and the BLAS libraries (scipy's optimiser) while this molecule relaxes
            (None: the process's settings). One, because a QM9-sized molecule gains little from more, and threads
            that share busy cores wait on each other: this file's tests took 40 times longer on two threads beside
            the study's two training processes.

    Returns:
        A :class:`Relaxation`; an unscorable molecule has its ``reason`` set and never raises.

    Raises:
        XtbUnavailableError: tblite is not installed.
    """
    # threadpoolctl: part of the [xtb] extra, like tblite, whose OpenMP and BLAS threads it limits
    from threadpoolctl import threadpool_limits

    calculator_class = tblite_calculator_class()
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    z = np.asarray(z, dtype=np.int32)
    x0 = np.asarray(positions, dtype=np.float64).reshape(-1) * BOHR_PER_ANGSTROM
    with threadpool_limits(limits=threads):  # OpenMP and the BLAS libraries (scipy, numpy) alike
        outcome = _relax(calculator_class, z, x0, charge, gradient_tolerance, max_steps)
    return Relaxation(**outcome, seconds=time.perf_counter() - start_wall, cpu_seconds=time.process_time() - start_cpu)


def _relax(calculator_class, z: np.ndarray, x0: np.ndarray, charge: int, gradient_tolerance: float,
           max_steps: int) -> dict:
    """The fields of a Relaxation but its timings; ``x0`` is [3N] Bohr."""
    # scipy: its optimiser is needed only with tblite, so the import waits until a molecule is relaxed
    from scipy.optimize import minimize
    from tblite.exceptions import TBLiteRuntimeError, TBLiteValueError

    empty = {"drop_kcal_per_mol": None, "energy_start": None, "energy_relaxed": None, "relaxed_positions": None,
             "gradient_norm": None, "steps": 0}
    if odd_electrons(z, charge):
        return {**empty, "reason": ODD_ELECTRONS}
    if not np.isfinite(x0).all():
        return {**empty, "reason": NON_FINITE}
    try:
        energy_and_gradient = _energy_and_gradient(calculator_class, z, x0, charge)
        energy_start, gradient = energy_and_gradient(x0)
        empty.update(energy_start=energy_start, gradient_norm=float(np.linalg.norm(gradient)))
        # L-BFGS-B stops on the largest component; this bound on it guarantees the norm bound
        result = minimize(energy_and_gradient, x0, jac=True, method="L-BFGS-B",
                          options={"maxiter": max_steps, "maxfun": 2 * max_steps, "maxcor": 20, "ftol": 1e-15,
                                   "gtol": gradient_tolerance / math.sqrt(x0.size)})
    except _NonFiniteEnergy:
        return {**empty, "reason": NON_FINITE}
    except (TBLiteRuntimeError, TBLiteValueError):
        return {**empty, "reason": FAILED_CALCULATION}
    norm = float(np.linalg.norm(result.jac))
    if norm > gradient_tolerance:
        return {**empty, "gradient_norm": norm, "steps": int(result.nit), "reason": NOT_CONVERGED}
    return {"drop_kcal_per_mol": (energy_start - float(result.fun)) * HARTREE_TO_KCAL_PER_MOL,
            "energy_start": energy_start, "energy_relaxed": float(result.fun),
            "relaxed_positions": result.x.reshape(-1, 3) / BOHR_PER_ANGSTROM, "gradient_norm": norm,
            "steps": int(result.nit), "reason": None}


def odd_electrons(z: np.ndarray, charge: int) -> bool:
    """Whether a molecule of atomic numbers ``z`` and total ``charge`` has an odd electron count (no closed shell)."""
    return bool((int(np.asarray(z).sum()) - charge) % 2)


def silent_calculator(calculator_class, z: np.ndarray, positions_bohr: np.ndarray, charge: int):
    """A GFN2-xTB calculator of tblite for a closed-shell molecule (``z`` [N] int32, positions [N, 3] Bohr) that logs
    nothing."""
    calculator = calculator_class(METHOD, z, positions_bohr, charge=float(charge), uhf=0, logger=lambda message: None)
    calculator.set("verbosity", 0)
    return calculator


def _energy_and_gradient(calculator_class, z: np.ndarray, x0: np.ndarray, charge: int):
    """``f(x) -> (energy Hartree, gradient [3N] Hartree/Bohr)`` at ``x`` ([3N] Bohr), silent, each SCF started
    from the previous wavefunction (fewer SCF iterations along the relaxation)."""
    calculator = silent_calculator(calculator_class, z, x0.reshape(-1, 3), charge)
    previous = None

    def energy_and_gradient(x: np.ndarray) -> tuple[float, np.ndarray]:
        nonlocal previous
        calculator.update(x.reshape(-1, 3))
        previous = calculator.singlepoint(previous)
        energy, gradient = float(previous.get("energy")), np.asarray(previous.get("gradient")).reshape(-1)
        if not (math.isfinite(energy) and np.isfinite(gradient).all()):
            raise _NonFiniteEnergy
        return energy, gradient

    return energy_and_gradient


def relaxation_summary(molecules: Iterable[tuple], max_molecules: int | None = None, progress: bool = False) -> dict:
    """The geometry check over a set of molecules: median and 90th percentile of the energy drop.

    Args:
        molecules: ``(z, pos, ...)`` tuples: [N] atomic numbers, [N, 3] Angstrom; further entries (charges,
            properties) are ignored: every molecule is scored neutral.
        max_molecules: score only the first this many (None: all).
        progress: show a progress bar (stderr).

    Returns:
        ``method`` and ``tblite_version``; ``median_drop_kcal_per_mol`` and ``p90_drop_kcal_per_mol`` over the
        scored molecules (None if none was scored); ``scored``, ``molecules`` (those attempted) and
        ``unscorable_fraction`` (of those attempted); ``unscorable`` ``{reason: count}`` for every reason of
        ``REASONS``; ``seconds_per_molecule`` and ``cpu_seconds_per_molecule`` (means over the attempted) and
        ``seconds_total``; ``convergence`` (the gradient-norm threshold and the step limit).

    Raises:
        XtbUnavailableError: tblite is not installed.
    """
    tblite_calculator_class()  # fail before the first molecule, not after reading them all
    chosen = list(itertools.islice(molecules, max_molecules))
    results = [relax_molecule(m[0], m[1]) for m in tqdm(chosen, desc="xTB relaxations", disable=not progress)]
    return summarise(results)


def summarise(results: list[Relaxation]) -> dict:
    """The summary of :func:`relaxation_summary` from per-molecule results."""
    drops = np.array([r.drop_kcal_per_mol for r in results if r.scored], dtype=np.float64)
    n = len(results)
    return {
        "method": METHOD,
        "tblite_version": metadata.version("tblite"),
        "median_drop_kcal_per_mol": float(np.median(drops)) if drops.size else None,
        "p90_drop_kcal_per_mol": float(np.percentile(drops, 90)) if drops.size else None,
        "scored": int(drops.size),
        "molecules": n,
        "unscorable_fraction": (n - drops.size) / n if n else 0.0,
        "unscorable": {reason: sum(r.reason == reason for r in results) for reason in REASONS},
        "seconds_per_molecule": float(np.mean([r.seconds for r in results])) if n else None,
        "cpu_seconds_per_molecule": float(np.mean([r.cpu_seconds for r in results])) if n else None,
        "seconds_total": float(sum(r.seconds for r in results)),
        "convergence": {"gradient_norm_hartree_per_bohr": GRADIENT_NORM_TOLERANCE, "max_steps": MAX_STEPS,
                        "optimiser": "scipy L-BFGS-B on Cartesian coordinates"},
    }


def qm9_relaxation_floor(num: int = 100, cache_dir=None, progress: bool = False) -> dict:
    """The geometry check on real QM9: the first ``num`` molecules of the EDM test split (in EDM's order).

    Real QM9 geometries are DFT (B3LYP/6-31G(2df,p)) minima, so GFN2-xTB moves them only a little: this is the
    floor a generative model's number is compared with (issue 28 reports a median of about 1.3 kcal/mol).

    Returns:
        :func:`relaxation_summary`'s dict plus ``source`` (which molecules).
    """
    arrays = load_qm9(cache_dir)
    rows = edm_split(arrays)["test"][:num]
    summary = relaxation_summary((arrays.molecule(int(row)) for row in rows), progress=progress)
    return {"source": f"QM9 EDM test split, its first {len(rows)} molecules", **summary}
