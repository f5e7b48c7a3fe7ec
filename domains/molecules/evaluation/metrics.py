"""EDM's molecule metrics over a set of molecules (docs/protocols.md §1): stability, validity,
uniqueness, V x U and novelty.

Each molecule's verdicts (stable atoms, the SMILES that decides validity) are
``chem/stability.py``'s: everything is decided by the 3D coordinates through the EDM bond rule
in ``chem/bonds.py``; bonds stored in a file are ignored. A molecule is a pair ``(z, pos)``: [N]
atomic numbers and [N, 3] positions in Angstrom, or a triple ``(z, pos, charges)`` with [N]
formal charges.
"""

from __future__ import annotations

from collections.abc import Iterable

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


def evaluate_molecules(
    molecules: Iterable[tuple], train_smiles: Iterable[str] | None = None
) -> dict[str, float | int | str | None]:
    """All EDM metrics of a set of molecules, as fractions (0..1) and the counts behind them.

    Args:
        molecules: iterable of ``(z, pos)``: [N] atomic numbers, [N, 3] Angstrom, or of
            ``(z, pos, charges)`` with [N] formal charges.
        train_smiles: training SMILES rebuilt with the same rule (``qm9.train_smiles()``, or the
            ``training_smiles`` a custom-data checkpoint stores); None leaves novelty out (reported as None).

    Returns:
        ``atom_stability`` (pooled over atoms), ``molecule_stability``, ``validity``,
        ``uniqueness`` (distinct valid / valid), ``validity_x_uniqueness``, ``novelty``
        (unique valid not in ``train_smiles`` / unique valid), the counts ``n_*`` and ``protocol``.

    Raises:
        ValueError: no molecules.
        UnknownElementError: an atom without EDM bond lengths (``elements.KNOWN_ELEMENTS``).
    """
    verdicts = Verdicts.of(molecules)
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
        "protocol": PROTOCOL,
    }
