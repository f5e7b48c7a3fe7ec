"""EDM's molecule metrics (docs/protocols.md §1): stability, validity, uniqueness, V x U and novelty.

Everything is decided by the 3D coordinates through the EDM bond rule in
``bonds.py``; bonds stored in a file are ignored. A molecule is a pair
``(z, pos)``: [N] atomic numbers and [N, 3] positions in Angstrom.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from rdkit import Chem
from rdkit.rdBase import BlockLogs

from .bonds import bond_orders, mol_from_bond_orders
from .elements import VALENCE_OF_TYPE, type_index

PROTOCOL = "EDM (Hoogeboom et al. 2022): bond orders from distances, explicit H"


def stable_atoms(z, pos) -> np.ndarray:
    """Which atoms have a summed EDM bond order equal to their valence (H 1, C 4, N 3, O 2, F 1).

    Returns:
        [N] bool.
    """
    return _stable_from_orders(z, bond_orders(z, pos))


def _stable_from_orders(z, orders: np.ndarray) -> np.ndarray:
    return orders.sum(axis=1) == VALENCE_OF_TYPE[type_index(z)]


def atom_stability(molecules: Iterable[tuple]) -> float:
    """Stable atoms / all atoms, pooled over every molecule."""
    stable = [stable_atoms(z, pos) for z, pos in molecules]
    if not stable:
        raise ValueError("There are no molecules to evaluate.")
    return float(sum(s.sum() for s in stable) / sum(len(s) for s in stable))


def molecule_stability(molecules: Iterable[tuple]) -> float:
    """Molecules whose atoms are all stable / molecules."""
    stable = [bool(stable_atoms(z, pos).all()) for z, pos in molecules]
    if not stable:
        raise ValueError("There are no molecules to evaluate.")
    return sum(stable) / len(stable)


def molecule_smiles(z, pos, largest_fragment: bool = True) -> str | None:
    """Canonical SMILES (explicit H) of the molecule built from EDM bond orders, or None if invalid.

    Valid means ``Chem.SanitizeMol`` raises nothing; atoms with too few bonds get
    implicit hydrogens, as in EDM. With ``largest_fragment`` the SMILES is that of
    the fragment with most atoms (the first one on ties), as EDM's validity.
    """
    return _smiles_from_orders(z, bond_orders(z, pos), largest_fragment)


def _smiles_from_orders(z, orders: np.ndarray, largest_fragment: bool) -> str | None:
    mol = mol_from_bond_orders(z, orders)
    try:
        with BlockLogs():  # a failed sanitization is the test's answer, not news for the log
            Chem.SanitizeMol(mol)
            if largest_fragment:
                fragments = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
                mol = max(fragments, key=lambda m: m.GetNumAtoms())
                Chem.SanitizeMol(mol)
    except (ValueError, RuntimeError):  # RDKit's MolSanitizeException is a ValueError
        return None
    return Chem.MolToSmiles(mol)


def molecule_report(z, pos) -> tuple[np.ndarray, str | None]:
    """One molecule under the EDM metric: which atoms are stable ([N] bool) and the canonical SMILES
    of its largest fragment (None if it fails sanitizing, i.e. it is invalid)."""
    orders = bond_orders(z, pos)
    return _stable_from_orders(z, orders), _smiles_from_orders(z, orders, largest_fragment=True)


def evaluate_molecules(
    molecules: Iterable[tuple], train_smiles: Iterable[str] | None = None
) -> dict[str, float | int | str | None]:
    """All EDM metrics of a set of molecules, as fractions (0..1) and the counts behind them.

    Args:
        molecules: iterable of ``(z, pos)``: [N] atomic numbers, [N, 3] Angstrom.
        train_smiles: training SMILES rebuilt with the same rule (``qm9.train_smiles()``);
            None leaves novelty out (reported as None).

    Returns:
        ``atom_stability`` (pooled over atoms), ``molecule_stability``, ``validity``,
        ``uniqueness`` (distinct valid / valid), ``validity_x_uniqueness``, ``novelty``
        (unique valid not in ``train_smiles`` / unique valid), the counts ``n_*`` and ``protocol``.

    Raises:
        ValueError: no molecules.
        UnknownElementError: an atom outside H, C, N, O, F.
    """
    n_molecules = n_atoms = n_stable_atoms = n_stable_molecules = 0
    valid: list[str] = []
    for z, pos in molecules:
        stable, smiles = molecule_report(z, pos)
        n_molecules += 1
        n_atoms += len(stable)
        n_stable_atoms += int(stable.sum())
        n_stable_molecules += int(stable.all())
        if smiles is not None:
            valid.append(smiles)
    if n_molecules == 0:
        raise ValueError("There are no molecules to evaluate.")
    unique = set(valid)
    novel = None if train_smiles is None else unique.difference(train_smiles)
    return {
        "atom_stability": n_stable_atoms / max(n_atoms, 1),
        "molecule_stability": n_stable_molecules / n_molecules,
        "validity": len(valid) / n_molecules,
        "uniqueness": len(unique) / len(valid) if valid else 0.0,
        "validity_x_uniqueness": len(unique) / n_molecules,
        "novelty": None if novel is None else (len(novel) / len(unique) if unique else 0.0),
        "n_molecules": n_molecules,
        "n_atoms": n_atoms,
        "n_stable_atoms": n_stable_atoms,
        "n_stable_molecules": n_stable_molecules,
        "n_valid": len(valid),
        "n_unique": len(unique),
        "n_novel": None if novel is None else len(novel),
        "protocol": PROTOCOL,
    }
