"""SMILES of a molecule rebuilt from its 3D coordinates with the EDM bond rule (``bonds.py``).

The rebuilt SMILES is what validity, uniqueness and novelty compare (docs/protocols.md §1): the
training set's SMILES (``data/qm9.py``, ``data/custom_data.py``) and a sample's are built the same way.
"""
from __future__ import annotations

import numpy as np

from .bonds import bond_orders, mol_from_bond_orders


def molecule_smiles(z, pos, largest_fragment: bool = True, charges=None) -> str | None:
    """Canonical SMILES (explicit H) of the molecule built from EDM bond orders, or None if invalid.

    Valid means ``Chem.SanitizeMol`` raises nothing; atoms with too few bonds get
    implicit hydrogens, as in EDM. With ``largest_fragment`` the SMILES is that of
    the fragment with most atoms (the first one on ties), as EDM's validity.

    Args:
        z: [N] atomic numbers.
        pos: [N, 3] positions in Angstrom.
        charges: [N] formal charges, or None (all 0).
    """
    return smiles_from_bond_orders(z, bond_orders(z, pos), largest_fragment, charges)


def smiles_from_bond_orders(z, orders: np.ndarray, largest_fragment: bool, charges=None) -> str | None:
    """:func:`molecule_smiles` of a molecule whose ``[N, N]`` bond orders are already known."""
    # RDKit: optional; training imports this module and runs without it (tests/molecules/test_training_without_rdkit.py)
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    mol = mol_from_bond_orders(z, orders, charges)
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
