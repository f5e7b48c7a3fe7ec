"""Stability and validity of a molecule with its own bonds (a bond-aware model's, or a file's): MiDi's metric.

The EDM metric (``stability.py``) ignores any bonds a molecule comes with and derives them from
distances. Models that generate bonds (MiDi, EQGAT-diff, FlowMol) are scored on the bonds they
generate, under MiDi's rules (Vignac et al. 2023, ``midi/analysis/rdkit_functions.check_stability``
and ``midi/metrics/molecular_metrics.compute_validity``), which this module follows:

- an atom's valence is the sum of its bond classes' valences, an aromatic bond counting 1.5, rounded
  down to an integer (MiDi casts the sum with ``.long()``);
- it is stable when that valence is among :data:`MIDI_VALENCES` of its element at its formal charge
  (an unlisted charge takes the neutral entry). MiDi's table is more lenient than EDM's: a neutral C
  may have 3 or 4, a neutral N 2 or 3;
- atom stability pools the stable atoms over all atoms; a molecule is stable when all its atoms are;
- validity: the molecule's largest fragment (by atom count) sanitizes in RDKit; its canonical SMILES
  is the one uniqueness and novelty compare. Unlike EDM's rule, only that fragment is sanitized.
  ``connected`` counts molecules of one fragment.

A bond-carrying molecule is ``(z [N], bond_types [N, N] of chem/bond_types.BOND_CLASSES, charges [N] or None)``.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .bond_types import BOND_VALENCE, mol_from_bond_types
from .elements import SYMBOLS
from .stability import Verdicts

# MiDi's allowed_bonds, {symbol: {formal charge: allowed valences}}; the entry for charge 0 serves any
# charge the element has no entry for.
MIDI_VALENCES: dict[str, dict[int, tuple[int, ...]]] = {
    "H": {0: (1,), 1: (0,), -1: (0,)},
    "C": {0: (3, 4), 1: (3,), -1: (3,)},
    "N": {0: (2, 3), 1: (2, 3, 4), -1: (2,)},
    "O": {0: (2,), 1: (3,), -1: (1,)},
    "F": {0: (1,), -1: (0,)},
    "B": {0: (3,)}, "Si": {0: (4,)}, "P": {0: (3, 5), 1: (4,)},
    "S": {0: (2, 6), 1: (2, 3), 2: (4,), 3: (5,), -1: (3,)},
    "Cl": {0: (1,)}, "As": {0: (3,)}, "Br": {0: (1,), 1: (2,)}, "I": {0: (1,)},
}
PROTOCOL = "MiDi (Vignac et al. 2023): the molecule's own bonds, aromatic = 1.5, MiDi's valence table"


def midi_valences(number: int, charge: int = 0) -> tuple[int, ...]:
    """The valences MiDi allows an atom of atomic number ``number`` with formal charge ``charge``."""
    table = MIDI_VALENCES[SYMBOLS[int(number)]]
    return table.get(int(charge), table[0])


def atom_valences(bond_types: np.ndarray) -> np.ndarray:
    """``[N]`` int64 valences of a ``[N, N]`` matrix of bond classes: the sum of the bonds' valences
    (aromatic 1.5), rounded down as MiDi does."""
    return np.floor(BOND_VALENCE[np.asarray(bond_types, dtype=np.int64)].sum(axis=1) + 1e-9).astype(np.int64)


def stable_with_bonds(z, bond_types: np.ndarray, charges=None) -> np.ndarray:
    """``[N]`` bool: which atoms have a valence (:func:`atom_valences`) that MiDi allows them."""
    z = np.asarray(z, dtype=np.int64).reshape(-1)
    charges = np.zeros_like(z) if charges is None else np.asarray(charges, dtype=np.int64).reshape(-1)
    valences = atom_valences(bond_types)
    return np.array([v in midi_valences(n, q) for n, q, v in zip(z.tolist(), charges.tolist(), valences.tolist())],
                    dtype=bool)


def largest_fragment_smiles(z, bond_types: np.ndarray, charges=None) -> tuple[str | None, int]:
    """``(SMILES or None, fragments)``: the canonical SMILES of the molecule's largest fragment if that
    fragment sanitizes (MiDi's validity; None if it does not), and the number of fragments."""
    # RDKit: optional; training imports the chem layer and runs without it
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    fragments = Chem.GetMolFrags(mol_from_bond_types(z, bond_types, charges).GetMol(), asMols=True,
                                 sanitizeFrags=False)
    largest = Chem.Mol(max(fragments, key=lambda m: m.GetNumAtoms()))  # the first of the largest on ties
    with BlockLogs():  # a failed sanitization is the test's answer, not news for the log
        try:
            Chem.SanitizeMol(largest)
        except (ValueError, RuntimeError):  # RDKit's sanitization and kekulization errors are ValueErrors
            return None, len(fragments)
    return Chem.MolToSmiles(largest), len(fragments)


@dataclass
class BondVerdicts(Verdicts):
    """MiDi's verdicts over a set of bond-carrying molecules, counted (``evaluation/metrics.py`` adds
    uniqueness and novelty). ``validity`` is that of each molecule's largest fragment."""

    connected: int = 0

    @classmethod
    def of(cls, molecules: Iterable[tuple]) -> BondVerdicts:
        """Count the verdicts of ``(z, bond_types, charges or None)`` triples."""
        counted = cls()
        for z, bond_types, charges in molecules:
            smiles, fragments = largest_fragment_smiles(z, bond_types, charges)
            counted.count(stable_with_bonds(z, bond_types, charges), smiles)
            counted.connected += int(fragments == 1)
        return counted
