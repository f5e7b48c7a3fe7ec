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
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .candidates import CandidateTable, _number
from .geometry import relax_molecule
from .xtb_gap import GapScale, xtb_gap_ev

XTB_GAP, XTB_GAP_RELAXED, RELAXATION = "xtb_gap [eV]", "xtb_gap_relaxed [eV]", "relaxation [kcal/mol]"
XTB_COLUMNS = (XTB_GAP, XTB_GAP_RELAXED, RELAXATION)
KEPT = "kept_by_xtb"
TARGET_GAP = CandidateTable._column("target", "gap")  # the candidates table's gap target, "target_gap [eV]"


def xtb_scores(z: np.ndarray, pos: np.ndarray, scale: GapScale, charges: np.ndarray | None = None) -> dict[str, str]:
    """The three xTB cells of one molecule (``z`` [N], ``pos`` [N, 3] Angstrom, formal ``charges`` [N] or None for a
    neutral molecule); empty where xTB cannot score it."""
    charge = 0 if charges is None else int(np.asarray(charges).sum())
    gap = scale.to_dft(xtb_gap_ev(z, pos, charge))
    relaxation = relax_molecule(z, pos, charge)
    relaxed = scale.to_dft(xtb_gap_ev(z, relaxation.relaxed_positions, charge)) if relaxation.scored else None
    return {XTB_GAP: _number(gap), XTB_GAP_RELAXED: _number(relaxed), RELAXATION: _number(relaxation.drop_kcal_per_mol)}


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
