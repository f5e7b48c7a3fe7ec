"""Physics in the loop: GFN2-xTB's view of each sampled candidate, and keeping the ones closest to their target
(``sample molecules --xtb [--oversample F]``, issue 29 §3).

For each molecule with finite coordinates, three columns join the candidates table:

- ``xtb_gap [eV]``: its GFN2-xTB HOMO-LUMO gap at the written geometry, mapped onto QM9's DFT scale by the shipped
  line (``xtb_gap.read_gap_scale``; held-out MAE 0.47 eV on real molecules);
- ``xtb_gap_relaxed [eV]``: the same after relaxing the molecule with GFN2-xTB (``geometry.relax_molecule``): the gap
  of the nearest minimum, which is what the molecule would show;
- ``relaxation [kcal/mol]``: the energy the relaxation gives up (the geometry check of ``evaluate molecules --xtb``).

A molecule xTB cannot score (odd electron count, failed or unconverged calculation) has empty cells. With
``--oversample F`` the run draws F times the asked number and keeps those whose relaxed xTB gap lies closest to
their own gap target (:func:`closest_to_target`), among those that pass ``--filter``.

The relaxation costs about 30 times the gap at the written geometry (0.36 against 0.011 s a molecule on one busy
core), so a run computes the written gap of every molecule as it is drawn and relaxes afterwards, in a pool of
``workers`` processes (:func:`relax_rows`), and with ``--oversample`` it relaxes only the ``screen`` x asked
eligible molecules whose written gap lies closest to their target (:func:`rows_to_relax`): on the first rerank
benchmark (F = 4, 30 kept at each of three targets) screening to half of the drawn kept 30, 25 and 27 of the 30
that relaxing all would have kept, at median errors of 0.55, 0.30 and 0.52 eV against 0.55, 0.28 and 0.48. A
screened-out molecule has an empty relaxed gap and relaxation, and ``relaxed`` 0.
"""
from __future__ import annotations

import itertools
import multiprocessing
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from .candidates import CandidateTable, _number
from .geometry import relax_molecule
from .xtb_gap import GapScale, xtb_gap_ev

XTB_GAP, XTB_GAP_RELAXED, RELAXATION = "xtb_gap [eV]", "xtb_gap_relaxed [eV]", "relaxation [kcal/mol]"
RELAXED = "relaxed"  # 1: relaxed; 0: screened out by its written gap (--oversample), or xTB could not score it
XTB_COLUMNS = (XTB_GAP, XTB_GAP_RELAXED, RELAXATION, RELAXED)
KEPT = "kept_by_xtb"
TARGET_GAP = CandidateTable._column("target", "gap")  # the candidates table's gap target, "target_gap [eV]"


def _total_charge(charges: np.ndarray | None) -> int:
    return 0 if charges is None else int(np.asarray(charges).sum())


def written_gap_scores(z: np.ndarray, pos: np.ndarray, scale: GapScale, charges: np.ndarray | None = None) -> dict[str, str]:
    """The cheap xTB cell of one molecule (``z`` [N], ``pos`` [N, 3] Angstrom, formal ``charges`` [N] or None for a
    neutral molecule): its gap at the written geometry on the DFT scale, empty where xTB cannot score it; the
    relaxation's cells start empty (``relaxed`` 0) until :func:`relaxed_scores` fills them."""
    gap = scale.to_dft(xtb_gap_ev(z, pos, _total_charge(charges)))
    return {XTB_GAP: _number(gap), XTB_GAP_RELAXED: "", RELAXATION: "", RELAXED: 0}


def relaxed_scores(z: np.ndarray, pos: np.ndarray, scale: GapScale, charges: np.ndarray | None = None) -> dict[str, str]:
    """The relaxation's xTB cells of one molecule: its gap after relaxing (DFT scale) and the energy the relaxation
    gives up, with ``relaxed`` 1; empty cells and ``relaxed`` 0 where xTB cannot score it."""
    charge = _total_charge(charges)
    relaxation = relax_molecule(z, pos, charge)
    relaxed = scale.to_dft(xtb_gap_ev(z, relaxation.relaxed_positions, charge)) if relaxation.scored else None
    return {XTB_GAP_RELAXED: _number(relaxed), RELAXATION: _number(relaxation.drop_kcal_per_mol),
            RELAXED: int(relaxation.scored)}


def xtb_scores(z: np.ndarray, pos: np.ndarray, scale: GapScale, charges: np.ndarray | None = None) -> dict[str, str]:
    """Every xTB cell of one molecule: :func:`written_gap_scores` then :func:`relaxed_scores`."""
    return {**written_gap_scores(z, pos, scale, charges), **relaxed_scores(z, pos, scale, charges)}


def rows_to_relax(rows: Sequence[dict], asked: int | None, screen: float,
                  eligible: Callable[[dict], bool] = lambda row: True) -> list[int]:
    """The indices of the rows worth relaxing: every eligible row with a written xTB gap, or, for a run that keeps
    ``asked`` of them (``--oversample``) with ``screen`` > 0, only the ``ceil(screen x asked)`` whose written gap
    lies closest to their gap target (``closest_to_target`` on the written gap), in index order."""
    candidates = [r for r in rows if eligible(r) and r.get(XTB_GAP, "") != ""]
    if asked is None or screen <= 0:
        return [r["index"] for r in candidates]
    keep = int(np.ceil(screen * asked))
    scored = [(error, r["index"]) for r in candidates if (error := gap_error(r, column=XTB_GAP)) is not None]
    return sorted(index for _, index in sorted(scored)[:keep])


def relax_rows(molecules: dict[int, tuple], indices: Sequence[int], scale: GapScale, workers: int = 1,
               progress: Callable[[], None] | None = None) -> dict[int, dict[str, str]]:
    """:func:`relaxed_scores` of ``molecules[i]`` (``(z, pos, charges)``) for each index, in ``workers`` processes
    (one thread each; 1: in this process). The results do not depend on ``workers``. ``progress`` is called once per
    molecule done."""
    jobs = [molecules[i] for i in indices]  # (z, pos, charges) each
    arguments = ([z for z, _, _ in jobs], [pos for _, pos, _ in jobs], itertools.repeat(scale), [q for _, _, q in jobs])
    if workers <= 1 or len(indices) <= 1:
        return _in_order(indices, map(relaxed_scores, *arguments), progress)
    # spawned workers, not forked: a fork of a process whose torch and OpenMP threads are running can hang
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return _in_order(indices, pool.map(relaxed_scores, *arguments), progress)


def _in_order(indices: Sequence[int], cells: Iterable[dict], progress: Callable[[], None] | None) -> dict[int, dict]:
    """``{index: cells}`` as the results come (in ``indices``' order), calling ``progress`` after each."""
    results = {}
    for i, row_cells in zip(indices, cells):
        results[i] = row_cells
        if progress:
            progress()
    return results


def gap_error(row: dict, target_column: str = TARGET_GAP, column: str = XTB_GAP_RELAXED) -> float | None:
    """``|xTB gap - target|`` (eV) of one table row, None when it lacks either cell."""
    if row.get(column, "") == "" or row.get(target_column, "") == "":
        return None
    return abs(float(row[column]) - float(row[target_column]))


def closest_to_target(rows: Sequence[dict], target_column: str, keep: int,
                      eligible: Callable[[dict], bool] = lambda row: True) -> list[int]:
    """The indices of the ``keep`` eligible rows whose relaxed xTB gap lies closest to their ``target_column``
    (ties by index), in index order; rows without either value are never kept (fewer come back if fewer qualify)."""
    scored = [(error, r["index"]) for r in rows if eligible(r) and (error := gap_error(r, target_column)) is not None]
    return sorted(index for _, index in sorted(scored)[:keep])


def gap_errors(rows: Sequence[dict], target_column: str = TARGET_GAP, column: str = XTB_GAP_RELAXED) -> np.ndarray:
    """``|xTB gap - target|`` (eV) of the rows that have both (``gap_error``)."""
    return np.array([error for r in rows if (error := gap_error(r, target_column, column)) is not None])
