"""Bond types as a categorical variable: the classes a bond-aware model generates on every atom pair.

Class ``k`` of :data:`BOND_CLASSES` is ``none`` (no bond), ``single``, ``double``, ``triple`` or
``aromatic``; a pair's class is stored as one integer, ``0..4``. In a valence sum an aromatic bond
counts 1.5 (:data:`BOND_VALENCE`), as MiDi's metric counts it. QM9's bonds are stored kekulized
(``data/qm9_bonds.py`` says why), so the aromatic class never occurs in its data, but a generated or
read molecule may carry it.

Pairs are unordered: one class per pair, a symmetric ``[N, N]`` matrix per molecule (:func:`bond_matrix`).
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


def bond_matrix(n: int, pairs: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The symmetric ``[n, n]`` int64 matrix of bond classes from a bond list: ``pairs [B, 2]`` atom
    indices and ``classes [B]`` (1..4); 0 (none) elsewhere and on the diagonal."""
    out = np.zeros((n, n), dtype=np.int64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    out[pairs[:, 0], pairs[:, 1]] = classes
    out[pairs[:, 1], pairs[:, 0]] = classes
    return out


def mol_from_bond_types(z, types: np.ndarray, charges=None, pos=None) -> Chem.RWMol:
    """An RDKit molecule (not sanitized) from atomic numbers ``z [N]``, a symmetric ``[N, N]`` matrix of bond
    classes (0..4, aromatic included) and formal charges ``[N]`` (None: neutral), with a 3D conformer from
    ``pos [N, 3]`` Angstrom when given."""
    # RDKit: optional; training imports the chem layer and runs without it
    from rdkit import Chem
    from rdkit.Geometry import Point3D

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
    if pos is not None:
        conformer = Chem.Conformer(len(z))
        for k, (x, y, w) in enumerate(np.asarray(pos, dtype=np.float64).reshape(-1, 3)):
            conformer.SetAtomPosition(k, Point3D(float(x), float(y), float(w)))
        mol.AddConformer(conformer, assignId=True)
    return mol


def bond_classes_of(mol: Chem.Mol) -> np.ndarray:
    """The ``[N, N]`` int64 matrix of bond classes of an RDKit molecule's bonds.

    Raises:
        ValueError: a bond outside the classes (dative, quadruple, ...).
    """
    # RDKit: optional; training imports the chem layer and runs without it
    from rdkit import Chem

    index = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3, Chem.BondType.AROMATIC: AROMATIC}
    pairs, classes = [], []
    for bond in mol.GetBonds():
        if bond.GetBondType() not in index:
            raise ValueError(f"a {bond.GetBondType()} bond is none of the bond classes {', '.join(BOND_CLASSES)}")
        pairs.append((bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()))
        classes.append(index[bond.GetBondType()])
    return bond_matrix(mol.GetNumAtoms(), np.array(pairs, dtype=np.int64).reshape(-1, 2), np.array(classes, dtype=np.int64))
