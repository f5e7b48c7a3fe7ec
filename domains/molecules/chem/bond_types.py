"""Bond types as a categorical variable: the classes a bond-aware model generates on every atom pair.

Class ``k`` of :data:`BOND_CLASSES` is ``none`` (no bond), ``single``, ``double``, ``triple`` or
``aromatic``; a pair's class is stored as one integer, ``0..4``. In a valence sum an aromatic bond
counts 1.5 (:data:`BOND_VALENCE`), as MiDi's metric counts it. QM9's bonds are stored kekulized
(``data/qm9_bonds.py`` says why), so the aromatic class never occurs in its data, but a generated or
read molecule may carry it.

Pairs are unordered: one class per ``i < j``, in the order of :func:`upper_pairs`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from rdkit import Chem

BOND_CLASSES: tuple[str, ...] = ("none", "single", "double", "triple", "aromatic")
NUM_BOND_CLASSES = len(BOND_CLASSES)
AROMATIC = 4
BOND_VALENCE = np.array([0.0, 1.0, 2.0, 3.0, 1.5])  # what each class adds to an atom's valence


def upper_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The unordered pairs ``i < j`` of ``n`` atoms, row-major: ``(i [n(n-1)/2], j [n(n-1)/2])`` int64."""
    return np.triu_indices(n, k=1)


def bond_matrix(n: int, pairs: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The symmetric ``[n, n]`` int64 matrix of bond classes from a bond list: ``pairs [B, 2]`` atom
    indices and ``classes [B]`` (1..4); 0 (none) elsewhere and on the diagonal."""
    out = np.zeros((n, n), dtype=np.int64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    out[pairs[:, 0], pairs[:, 1]] = classes
    out[pairs[:, 1], pairs[:, 0]] = classes
    return out


def mol_from_bond_types(z, types: np.ndarray, charges=None) -> Chem.RWMol:
    """An RDKit molecule graph (no conformer, not sanitized) from atomic numbers ``z [N]``, a symmetric
    ``[N, N]`` matrix of bond classes (0..4, aromatic included) and formal charges ``[N]`` (None: neutral)."""
    # RDKit: optional; training imports the chem layer and runs without it
    from rdkit import Chem

    rdkit_types = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE,
                   AROMATIC: Chem.BondType.AROMATIC}
    z = np.asarray(z).reshape(-1)
    charges = np.zeros(len(z), dtype=np.int64) if charges is None else np.asarray(charges).reshape(-1)
    mol = Chem.RWMol()
    for number, charge in zip(z, charges):
        atom = Chem.Atom(int(number))
        atom.SetFormalCharge(int(charge))
        mol.AddAtom(atom)
    types = np.asarray(types)
    for i, j in zip(*np.nonzero(np.triu(types, k=1))):
        bond_type = rdkit_types[int(types[i, j])]
        mol.AddBond(int(i), int(j), bond_type)
        if bond_type == Chem.BondType.AROMATIC:
            mol.GetAtomWithIdx(int(i)).SetIsAromatic(True)
            mol.GetAtomWithIdx(int(j)).SetIsAromatic(True)
    return mol
