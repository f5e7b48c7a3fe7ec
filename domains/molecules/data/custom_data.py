"""Custom data sets: SDF and XYZ files (or folders of them) as the same ``Data`` graphs as QM9.

Any element with EDM bond lengths (``elements.KNOWN_ELEMENTS``: H, B, C, N, O, F, Si, P, S,
Cl, As, Br, I) may appear; hydrogens must be explicit. The element set of the graphs is the
one asked for, or by default the smallest covering the data, with formal charges (read from
the SDF's atom charges) whenever any atom is charged. If every molecule carries all six QM9
properties (SD fields or ``key=value`` XYZ comments named as in ``qm9.PROPERTY_NAMES``, in
``qm9.PROPERTY_UNITS``), they become ``y``.

Splits: ``random_split`` (the default) or ``scaffold_split`` (Bemis-Murcko scaffolds, whole
scaffold groups to one split, so that test molecules have scaffolds unseen in training).

RDKit reads the files; it is imported where it is used, so that QM9 training, which imports
``datamodule.py`` and with it this module, runs without RDKit.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch_geometric.data import Data

from ..chem.elements import ElementSet
from ..chem.files import MOLECULE_SUFFIXES, MoleculeFileError, read_molecules
from ..chem.smiles import molecule_smiles
from .graphs import atoms_to_data
from .qm9 import PROPERTY_NAMES

SPLIT_SEED = 0
SPLIT_FRACTIONS = (0.9, 0.05, 0.05)


@dataclass
class CustomMolecules:
    """A custom collection read into graphs.

    Attributes:
        graphs: one ``Data`` per molecule (fields in ``graphs.py``), in file order.
        elements: the element set of their one-hot (and formal-charge) features.
        smiles: [M] SMILES of each molecule rebuilt from its coordinates and formal charges with
            the EDM bond rule (the metric's rule, so that novelty compares like with like); None
            where the rebuilt molecule fails sanitizing.
        file_smiles: [M] SMILES of each molecule as its file describes it: an SDF's own bond block
            (sanitized by RDKit), or for XYZ, which has no bonds, ``smiles``. The scaffold split
            uses these: the EDM rule reads most aromatic rings as unsaturated, and would lose them.
    """

    graphs: list[Data]
    elements: ElementSet
    smiles: list[str | None]
    file_smiles: list[str | None]


RDKIT_CONTRIB = "rdkit-contrib:"


def resolve_source(source: str | os.PathLike) -> Path:
    """A path, or ``rdkit-contrib:<path>``: a file of RDKit's ``Contrib`` folder, which the ``rdkit``
    wheel installs (e.g. ``rdkit-contrib:PBF/testData/egfr.sdf``), so configs name it on any machine."""
    text = os.fspath(source)
    if text.startswith(RDKIT_CONTRIB):
        # RDKit: optional; training imports this module and runs without it (tests/molecules/test_training_without_rdkit.py)
        from rdkit import RDConfig

        return Path(RDConfig.RDContribDir) / text[len(RDKIT_CONTRIB):]
    return Path(text)


def molecule_files(source: str | os.PathLike) -> list[Path]:
    """The ``.sdf``/``.xyz`` files of ``source`` (see ``resolve_source``): the file itself, or those
    under a folder, sorted.

    Raises:
        MoleculeFileError: ``source`` does not exist or holds no such file.
    """
    source = resolve_source(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in MOLECULE_SUFFIXES)
        if not files:
            raise MoleculeFileError(f"{source} holds no .sdf or .xyz file.")
        return files
    if not source.exists():
        raise MoleculeFileError(f"{source} does not exist.")
    return [source]


def read_custom_molecules(source: str | os.PathLike, elements: ElementSet | None = None,
                          formal_charges: bool | None = None) -> CustomMolecules:
    """Every molecule of an SDF/XYZ file or folder as a ``Data`` graph (see ``graphs.py``).

    ``idx`` is the molecule's position in the sorted files, counted from 0.

    Args:
        source: a file or a folder of files.
        elements: the element set of the graphs; None: the smallest set covering the data, with
            formal charges as ``formal_charges`` says (None: if any atom is charged).

    Raises:
        MoleculeFileError: a missing, empty or malformed file.
        UnknownElementError: an element without bond lengths, or outside ``elements`` (names the
            element and file).
    """
    files = molecule_files(source)
    molecules = [(*m, path) for path in files for m in read_molecules(path, with_charges=True)]
    if not molecules:
        raise MoleculeFileError(f"{source} holds no molecules.")
    if elements is None:
        if formal_charges is None:
            formal_charges = any(np.any(q != 0) for _, _, _, q, _ in molecules)
        elements = ElementSet.covering([z for z, *_ in molecules], formal_charges=formal_charges)
    labelled = all(all(name in props for name in PROPERTY_NAMES) for _, _, props, _, _ in molecules)
    graphs, smiles = [], []
    for i, (z, pos, props, charges, path) in enumerate(molecules):
        try:
            y = [float(props[name]) for name in PROPERTY_NAMES] if labelled else None
        except ValueError:
            raise MoleculeFileError(f"{source}: molecule {i} has a property that is not a number.") from None
        graphs.append(atoms_to_data(z, pos, y=y, idx=i, elements=elements, formal_charges=charges, path=path))
        smiles.append(molecule_smiles(z, pos, largest_fragment=False, charges=charges))
    per_file = Counter(source_path for *_, source_path in molecules)  # molecules come file by file
    file_smiles: list[str | None] = []
    for path in files:  # an SDF's own bonds; XYZ has none, so its molecules keep the rebuilt SMILES
        start = len(file_smiles)
        file_smiles += _sdf_smiles(path) if path.suffix.lower() == ".sdf" else smiles[start:start + per_file[path]]
    return CustomMolecules(graphs, elements, smiles, file_smiles)


def _sdf_smiles(path: Path) -> list[str | None]:
    """SMILES of every record of an SDF from its own bond block (None where RDKit cannot sanitize it)."""
    # RDKit: optional; training imports this module and runs without it (tests/molecules/test_training_without_rdkit.py)
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    with BlockLogs():
        return [None if m is None else Chem.MolToSmiles(m) for m in Chem.SDMolSupplier(str(path), removeHs=False)]


def load_custom_molecules(source: str | os.PathLike, elements: ElementSet | None = None) -> list[Data]:
    """The graphs of :func:`read_custom_molecules`."""
    return read_custom_molecules(source, elements).graphs


def split_sizes(n: int, fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> tuple[int, int, int]:
    """Train, validation and test sizes of ``n`` molecules; a set of 3 or more keeps one of each."""
    n_valid = n_test = int(fractions[1] * n)
    if n >= 3:
        n_valid, n_test = max(n_valid, 1), max(n_test, 1)
    return n - n_valid - n_test, n_valid, n_test


def random_split(n: int, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """``{"train", "valid", "test"}`` index arrays: a seeded permutation cut 90/5/5."""
    perm = np.random.RandomState(seed).permutation(n)
    n_train, n_valid, _ = split_sizes(n)
    return {"train": perm[:n_train], "valid": perm[n_train:n_train + n_valid], "test": perm[n_train + n_valid:]}


def murcko_scaffold(smiles: str | None) -> str:
    """The Bemis-Murcko scaffold SMILES of a molecule ("" for an acyclic one; "" if ``smiles`` is None)."""
    if smiles is None:
        return ""
    # RDKit: optional; training imports this module and runs without it (tests/molecules/test_training_without_rdkit.py)
    from rdkit import Chem
    from rdkit.Chem.Scaffolds import MurckoScaffold

    mol = Chem.MolFromSmiles(smiles)
    return "" if mol is None else MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)


def scaffold_split(smiles: list[str | None]) -> dict[str, np.ndarray]:
    """``{"train", "valid", "test"}`` index arrays with no Bemis-Murcko scaffold in two splits.

    The scaffold groups, largest first (ties: first occurrence), fill the training set up to its
    90 % share, then validation, then test (the deterministic split of Wu et al., MoleculeNet).
    Acyclic or unreadable molecules form the one scaffold "".
    """
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(smiles):
        groups.setdefault(murcko_scaffold(s), []).append(i)
    n_train, n_valid, _ = split_sizes(len(smiles))
    parts: dict[str, list[int]] = {"train": [], "valid": [], "test": []}
    for members in sorted(groups.values(), key=lambda g: (-len(g), g[0])):
        if len(parts["train"]) + len(members) <= n_train:
            parts["train"] += members
        elif len(parts["valid"]) + len(members) <= n_valid:
            parts["valid"] += members
        else:
            parts["test"] += members
    return {name: np.array(sorted(p), dtype=np.int64) for name, p in parts.items()}
