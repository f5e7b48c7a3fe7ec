"""Bond orders from 3D coordinates with the EDM rule (docs/protocols.md §1), and RDKit molecules built from them.

A pair at distance ``d`` (pm) is bonded with order 1 if ``d < b1 + 10``, order 2
if also ``d < b2 + 5`` and order 3 if also ``d < b3 + 3``; pairs without a b1
never bond. The margins are EDM's, tuned on QM9.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from .elements import KNOWN_ELEMENTS, SYMBOLS, check_known

if TYPE_CHECKING:
    from rdkit import Chem

# Reference lengths in pm (EDM's bond_analyze.py, its QM9 and GEOM tables), per unordered pair.
_SINGLE = {
    "HH": 74, "HC": 109, "HN": 101, "HO": 96, "HF": 92,
    "CC": 154, "CN": 147, "CO": 143, "CF": 135,
    "NN": 145, "NO": 140, "NF": 136,
    "OO": 148, "OF": 142,
    "FF": 142,
    # the elements beyond QM9 (EDM's GEOM table)
    "HB": 119, "HSi": 148, "HP": 144, "HAs": 152, "HS": 134, "HCl": 127, "HBr": 141, "HI": 161,
    "CSi": 185, "CP": 184, "CS": 182, "CCl": 177, "CBr": 194, "CI": 214,
    "NCl": 175, "NBr": 214, "NS": 168, "NI": 222, "NP": 177,
    "OBr": 172, "OS": 151, "OP": 163, "OSi": 163, "OCl": 164, "OI": 194,
    "FS": 158, "FSi": 160, "FCl": 166, "FBr": 178, "FP": 156, "FI": 187,
    "BCl": 175,
    "SiSi": 233, "SiS": 200, "SiCl": 202, "SiBr": 215, "SiI": 243,
    "ClCl": 199, "ClP": 203, "ClS": 207, "ClBr": 214,
    "SS": 204, "SBr": 225, "SP": 210, "SI": 234,
    "BrBr": 228, "BrP": 222,
    "PP": 221,
    "II": 266,
}  # fmt: skip
_DOUBLE = {"CC": 134, "CN": 129, "CO": 120, "NN": 125, "NO": 121, "OO": 121, "CS": 160, "OP": 150, "PS": 186}
_TRIPLE = {"CC": 120, "CN": 116, "CO": 113, "NN": 110}
MARGINS_PM = (10.0, 5.0, 3.0)


def _split_pair(pair: str) -> tuple[str, str]:
    """``"ClBr"`` -> ``("Cl", "Br")``: symbols start with a capital letter."""
    cut = next(i for i in range(1, len(pair)) if pair[i].isupper())
    return pair[:cut], pair[cut:]


def _threshold_table(lengths: dict[str, int], margin: float) -> np.ndarray:
    """[K, K] thresholds in pm over ``KNOWN_ELEMENTS``; 0 (never bonded) where the pair has no length."""
    table = np.zeros((len(KNOWN_ELEMENTS), len(KNOWN_ELEMENTS)))
    for pair, length in lengths.items():
        a, b = _split_pair(pair)
        i, j = KNOWN_ELEMENTS.index(a), KNOWN_ELEMENTS.index(b)
        table[i, j] = table[j, i] = length + margin
    return table


THRESHOLDS_PM = tuple(
    _threshold_table(lengths, margin) for lengths, margin in zip((_SINGLE, _DOUBLE, _TRIPLE), MARGINS_PM)
)
_ROW_OF_NUMBER = np.full(128, -1, dtype=np.int64)
for _number, _symbol in SYMBOLS.items():
    _ROW_OF_NUMBER[_number] = KNOWN_ELEMENTS.index(_symbol)



def bond_orders(z, pos) -> np.ndarray:
    """EDM bond orders between all pairs of atoms of one molecule.

    Args:
        z: [N] atomic numbers of ``KNOWN_ELEMENTS``.
        pos: [N, 3] positions in Angstrom.

    Returns:
        [N, N] int64 symmetric matrix of orders 0..3, zero on the diagonal.

    Raises:
        UnknownElementError: an element without EDM bond lengths.
    """
    t = _ROW_OF_NUMBER[check_known(z)]
    pos = np.asarray(pos, dtype=np.float64).reshape(-1, 3)
    d = 100.0 * np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)  # pm
    np.fill_diagonal(d, np.inf)
    single, double, triple = (table[t[:, None], t[None, :]] for table in THRESHOLDS_PM)
    order1 = d < single
    order2 = order1 & (d < double)
    order3 = order2 & (d < triple)
    return order1.astype(np.int64) + order2 + order3


def mol_from_bond_orders(z, orders: np.ndarray, charges=None) -> Chem.RWMol:
    """An RDKit molecule graph (no conformer, not sanitized) from atomic numbers and bond orders.

    Args:
        z: [N] atomic numbers.
        orders: [N, N] symmetric bond orders 0..3, e.g. from ``bond_orders``.
        charges: [N] formal charges, or None (all neutral).
    """
    # RDKit: optional; training imports this module and runs without it (tests/molecules/test_training_without_rdkit.py)
    from rdkit import Chem

    bond_types = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
    mol = Chem.RWMol()
    charges = np.zeros(len(np.asarray(z).reshape(-1)), dtype=np.int64) if charges is None else np.asarray(charges)
    for number, charge in zip(np.asarray(z).reshape(-1), charges.reshape(-1)):
        atom = Chem.Atom(int(number))
        atom.SetFormalCharge(int(charge))
        mol.AddAtom(atom)
    for i, j in zip(*np.nonzero(np.triu(orders, k=1))):
        mol.AddBond(int(i), int(j), bond_types[int(orders[i, j])])
    return mol


def to_rdkit_mol(z, pos, bonds: Literal["edm", "rdkit"] = "edm", charges=None) -> Chem.Mol:
    """An RDKit molecule with explicit atoms, a 3D conformer and bonds perceived from geometry.

    The molecule is *not* sanitized (sanitizing is the validity test); its property
    cache is updated non-strictly so it can be written and inspected as is.

    Args:
        z: [N] atomic numbers of ``KNOWN_ELEMENTS``.
        pos: [N, 3] positions in Angstrom.
        bonds: ``"edm"``: orders from ``bond_orders`` (the metric's rule).
            ``"rdkit"``: ``rdDetermineBonds.DetermineBonds`` with the total formal charge; where
            it fails (no consistent bond-order assignment) the result falls back to
            ``DetermineConnectivity``, i.e. single bonds only.
        charges: [N] formal charges (e.g. from an SDF, or a model that generates them), or None.

    Returns:
        ``Chem.Mol`` with one conformer.
    """
    # RDKit: optional; training imports this module and runs without it (tests/molecules/test_training_without_rdkit.py)
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds
    from rdkit.Geometry import Point3D

    if bonds not in ("edm", "rdkit"):
        raise ValueError(f"bonds must be 'edm' or 'rdkit', not {bonds!r}.")
    z = np.asarray(z, dtype=np.int64).reshape(-1)
    check_known(z)  # unknown elements fail here, whichever the rule
    pos = np.asarray(pos, dtype=np.float64).reshape(-1, 3)
    orders = bond_orders(z, pos) if bonds == "edm" else np.zeros((len(z), len(z)), dtype=np.int64)
    mol = mol_from_bond_orders(z, orders, charges)
    conformer = Chem.Conformer(len(z))
    for i, (x, y, w) in enumerate(pos):
        conformer.SetAtomPosition(i, Point3D(float(x), float(y), float(w)))
    mol.AddConformer(conformer, assignId=True)
    mol = mol.GetMol()
    if bonds == "rdkit":
        try:
            candidate = Chem.Mol(mol)
            total = 0 if charges is None else int(np.sum(charges))
            rdDetermineBonds.DetermineBonds(candidate, charge=total)
            mol = candidate
        except (ValueError, RuntimeError):
            rdDetermineBonds.DetermineConnectivity(mol)
    mol.UpdatePropertyCache(strict=False)
    return mol
