"""EDM's molecule metrics over a set of molecules (docs/protocols.md §1): stability, validity,
uniqueness, V x U and novelty.

Each molecule's verdicts (stable atoms, the SMILES that decides validity) are
``chem/stability.py``'s: everything is decided by the 3D coordinates through the EDM bond rule
in ``chem/bonds.py``; bonds stored in a file are ignored. A molecule is a pair ``(z, pos)``: [N]
atomic numbers and [N, 3] positions in Angstrom, or a triple ``(z, pos, charges)`` with [N]
formal charges.

A bond-aware model's molecule ``(z, pos, charges, bonds)`` also carries its generated [N, N] bond classes;
those are scored apart, under MiDi's metric (``chem/bond_stability.py``), as ``generated_bonds``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..chem import bond_stability
from ..chem.bond_stability import BondVerdicts
from ..chem.stability import Verdicts, as_molecule, stable_atoms
from ..data import qm9

PROTOCOL = "EDM (Hoogeboom et al. 2022): bond orders from distances, explicit H"


def atom_stability(molecules: Iterable[tuple]) -> float:
    """Stable atoms / all atoms, pooled over every molecule."""
    stable = [stable_atoms(*as_molecule(m)) for m in molecules]
    if not stable:
        raise ValueError("There are no molecules to evaluate.")
    return float(sum(s.sum() for s in stable) / sum(len(s) for s in stable))


def molecule_stability(molecules: Iterable[tuple]) -> float:
    """Molecules whose atoms are all stable / molecules."""
    stable = [bool(stable_atoms(*as_molecule(m)).all()) for m in molecules]
    if not stable:
        raise ValueError("There are no molecules to evaluate.")
    return sum(stable) / len(stable)


def novelty_reference(module) -> frozenset[str]:
    """The SMILES a model's samples are novel against: its own training set's, stored in the checkpoint
    of a model trained on custom data, or QM9's train split (``qm9.train_smiles``, cached after the first call)."""
    if getattr(module, "training_smiles", None) is not None:
        return frozenset(module.training_smiles)
    return qm9.train_smiles()  # the metric's own argument is also called train_smiles


def evaluate_generated_bonds(molecules: Iterable[tuple], train_smiles: Iterable[str] | None = None) -> dict:
    """MiDi's metric (``chem/bond_stability.py``) of molecules with their own bonds: ``(z [N], bond_types [N, N],
    charges [N] or None)``. Returns ``atom_stability``, ``molecule_stability``, ``validity`` (the largest
    fragment sanitizes), ``uniqueness``, ``novelty`` (None without ``train_smiles``: SMILES built the same
    way, ``qm9_bonds.train_bond_smiles()``), ``connected`` (one fragment), the counts and ``protocol``."""
    verdicts = BondVerdicts.of(molecules)
    return {**counted_metrics(verdicts, train_smiles), "connected": verdicts.connected / max(verdicts.molecules, 1),
            "protocol": bond_stability.PROTOCOL}


def counted_metrics(verdicts: Verdicts, train_smiles: Iterable[str] | None) -> dict[str, float | int | None]:
    """Stability, validity, uniqueness and novelty (fractions 0..1) and the counts behind them, from a set of
    molecules' verdicts (the EDM metric's, or MiDi's on generated bonds); novelty is None without ``train_smiles``.

    Raises:
        ValueError: no molecules.
    """
    if verdicts.molecules == 0:
        raise ValueError("There are no molecules to evaluate.")
    valid = verdicts.valid_smiles
    unique = set(valid)
    novel = None if train_smiles is None else unique.difference(train_smiles)
    return {
        "atom_stability": verdicts.atom_stability,
        "molecule_stability": verdicts.molecule_stability,
        "validity": verdicts.validity,
        "uniqueness": len(unique) / len(valid) if valid else 0.0,
        "validity_x_uniqueness": len(unique) / verdicts.molecules,
        "novelty": None if novel is None else (len(novel) / len(unique) if unique else 0.0),
        "n_molecules": verdicts.molecules,
        "n_atoms": verdicts.atoms,
        "n_stable_atoms": verdicts.stable_atoms,
        "n_stable_molecules": verdicts.stable_molecules,
        "n_valid": len(valid),
        "n_unique": len(unique),
        "n_novel": None if novel is None else len(novel),
    }


def evaluate_molecules(
    molecules: Iterable[tuple], train_smiles: Iterable[str] | None = None, bond_train_smiles: Iterable[str] | None = None
) -> dict[str, float | int | str | None]:
    """All EDM metrics of a set of molecules, as fractions (0..1) and the counts behind them.

    Args:
        molecules: iterable of ``(z, pos)``: [N] atomic numbers, [N, 3] Angstrom, or of
            ``(z, pos, charges)`` with [N] formal charges.
        train_smiles: training SMILES rebuilt with the same rule (``qm9.train_smiles()``, or the
            ``training_smiles`` a custom-data checkpoint stores); None leaves novelty out (reported as None).
        bond_train_smiles: the novelty reference of ``generated_bonds`` (``evaluate_generated_bonds``).

    Returns:
        ``atom_stability`` (pooled over atoms), ``molecule_stability``, ``validity``,
        ``uniqueness`` (distinct valid / valid), ``validity_x_uniqueness``, ``novelty``
        (unique valid not in ``train_smiles`` / unique valid), the counts ``n_*`` and ``protocol``; for
        molecules ``(z, pos, charges, bonds)`` of a bond-aware model also ``generated_bonds``, the dict of
        :func:`evaluate_generated_bonds` on their own bonds (MiDi's metric), while the rest stays EDM's.

    Raises:
        ValueError: no molecules.
        UnknownElementError: an atom without EDM bond lengths (``elements.KNOWN_ELEMENTS``).
    """
    molecules = list(molecules)
    summary = counted_metrics(Verdicts.of(molecules), train_smiles)
    generated = None
    if len(molecules[0]) > 3 and np.ndim(molecules[0][3]) == 2:  # (z, pos, charges, bonds): a bond-aware model's
        generated = evaluate_generated_bonds(((m[0], m[3], m[2]) for m in molecules), bond_train_smiles)
    return {
        **summary,
        "protocol": PROTOCOL,
        **({} if generated is None else {"generated_bonds": generated}),
    }


def evaluate_generated(molecules: list[tuple], train_smiles: Iterable[str] | None = None,
                       bond_train_smiles: Iterable[str] | None = None) -> dict:
    """A generator's samples scored so that every kind of model compares: EDM's metric on atoms and positions
    alone (EDM knows no formal charges), and, for a bond-aware model's ``(z, pos, charges, bonds)``, MiDi's on its
    own bonds and charges as ``generated_bonds`` (novelty against ``bond_train_smiles``)."""
    metrics = evaluate_molecules([m[:2] for m in molecules], train_smiles)
    if molecules and len(molecules[0]) > 3:
        metrics["generated_bonds"] = evaluate_generated_bonds([(z, bonds, charges) for z, _, charges, bonds in molecules],
                                                              bond_train_smiles)
    return metrics
