"""Bond orders from 3D coordinates with the EDM rule (docs/protocols.md §1), and RDKit molecules built from them.

A pair at distance ``d`` (pm) is bonded with order 1 if ``d < b1 + 10``, order 2
if also ``d < b2 + 5`` and order 3 if also ``d < b3 + 3``; pairs without a b1
never bond. The margins are EDM's, tuned on QM9.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from rdkit import Chem
from rdkit.Geometry import Point3D

from .elements import ATOM_TYPES, type_index

# Reference lengths in pm (EDM's bond_analyze.py), per unordered pair.
_SINGLE = {
    "HH": 74, "HC": 109, "HN": 101, "HO": 96, "HF": 92,
    "CC": 154, "CN": 147, "CO": 143, "CF": 135,
    "NN": 145, "NO": 140, "NF": 136,
    "OO": 148, "OF": 142,
    "FF": 142,
}  # fmt: skip
_DOUBLE = {"CC": 134, "CN": 129, "CO": 120, "NN": 125, "NO": 121, "OO": 121}
_TRIPLE = {"CC": 120, "CN": 116, "CO": 113, "NN": 110}
MARGINS_PM = (10.0, 5.0, 3.0)


def _threshold_table(lengths: dict[str, int], margin: float) -> np.ndarray:
    """[5, 5] thresholds in pm over ``ATOM_TYPES``; 0 (never bonded) where the pair has no length."""
    table = np.zeros((len(ATOM_TYPES), len(ATOM_TYPES)))
    for pair, length in lengths.items():
        i, j = ATOM_TYPES.index(pair[0]), ATOM_TYPES.index(pair[1])
        table[i, j] = table[j, i] = length + margin
    return table


THRESHOLDS_PM = tuple(
    _threshold_table(lengths, margin) for lengths, margin in zip((_SINGLE, _DOUBLE, _TRIPLE), MARGINS_PM)
)

_RDKIT_BOND = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}


def bond_orders(z, pos) -> np.ndarray:
    """EDM bond orders between all pairs of atoms of one molecule.

    Args:
        z: [N] atomic numbers (H, C, N, O, F).
        pos: [N, 3] positions in Angstrom.

    Returns:
        [N, N] int64 symmetric matrix of orders 0..3, zero on the diagonal.
    """
    t = type_index(z)
    pos = np.asarray(pos, dtype=np.float64).reshape(-1, 3)
    d = 100.0 * np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)  # pm
    np.fill_diagonal(d, np.inf)
    single, double, triple = (table[t[:, None], t[None, :]] for table in THRESHOLDS_PM)
    order1 = d < single
    order2 = order1 & (d < double)
    order3 = order2 & (d < triple)
    return order1.astype(np.int64) + order2 + order3


def mol_from_bond_orders(z, orders: np.ndarray) -> Chem.RWMol:
    """An RDKit molecule graph (no conformer, not sanitized) from atomic numbers and bond orders.

    Args:
        z: [N] atomic numbers.
        orders: [N, N] symmetric bond orders 0..3, e.g. from ``bond_orders``.
    """
    mol = Chem.RWMol()
    for number in np.asarray(z).reshape(-1):
        mol.AddAtom(Chem.Atom(int(number)))
    for i, j in zip(*np.nonzero(np.triu(orders, k=1))):
        mol.AddBond(int(i), int(j), _RDKIT_BOND[int(orders[i, j])])
    return mol


def to_rdkit_mol(z, pos, bonds: Literal["edm", "rdkit"] = "edm") -> Chem.Mol:
    """An RDKit molecule with explicit atoms, a 3D conformer and bonds perceived from geometry.

    The molecule is *not* sanitized (sanitizing is the validity test); its property
    cache is updated non-strictly so it can be written and inspected as is.

    Args:
        z: [N] atomic numbers (H, C, N, O, F).
        pos: [N, 3] positions in Angstrom.
        bonds: ``"edm"``: orders from ``bond_orders`` (the metric's rule).
            ``"rdkit"``: ``rdDetermineBonds.DetermineBonds`` with total charge 0; where
            it fails (no consistent bond-order assignment) the result falls back to
            ``DetermineConnectivity``, i.e. single bonds only.

    Returns:
        ``Chem.Mol`` with one conformer.
    """
    if bonds not in ("edm", "rdkit"):
        raise ValueError(f"bonds must be 'edm' or 'rdkit', not {bonds!r}.")
    z = np.asarray(z, dtype=np.int64).reshape(-1)
    type_index(z)  # unknown elements fail here, whichever the rule
    pos = np.asarray(pos, dtype=np.float64).reshape(-1, 3)
    orders = bond_orders(z, pos) if bonds == "edm" else np.zeros((len(z), len(z)), dtype=np.int64)
    mol = mol_from_bond_orders(z, orders)
    conformer = Chem.Conformer(len(z))
    for i, (x, y, w) in enumerate(pos):
        conformer.SetAtomPosition(i, Point3D(float(x), float(y), float(w)))
    mol.AddConformer(conformer, assignId=True)
    mol = mol.GetMol()
    if bonds == "rdkit":
        from rdkit.Chem import rdDetermineBonds

        try:
            candidate = Chem.Mol(mol)
            rdDetermineBonds.DetermineBonds(candidate, charge=0)
            mol = candidate
        except (ValueError, RuntimeError):
            rdDetermineBonds.DetermineConnectivity(mol)
    mol.UpdatePropertyCache(strict=False)
    return mol
