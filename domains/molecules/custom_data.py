"""Custom data sets: SDF and XYZ files (or folders of them) as the same ``Data`` graphs as QM9.

Elements must be H, C, N, O or F; hydrogens must be explicit. If every molecule
carries all six QM9 properties (SD fields or ``key=value`` XYZ comments named as
in ``qm9.PROPERTY_NAMES``, in ``qm9.PROPERTY_UNITS``), they become ``y``.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch_geometric.data import Data

from .files import MOLECULE_SUFFIXES, MoleculeFileError, read_molecules
from .graphs import atoms_to_data
from .qm9 import PROPERTY_NAMES


def molecule_files(source: str | os.PathLike) -> list[Path]:
    """The ``.sdf``/``.xyz`` files of ``source``: the file itself, or those under a folder, sorted.

    Raises:
        MoleculeFileError: ``source`` does not exist or holds no such file.
    """
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in MOLECULE_SUFFIXES)
        if not files:
            raise MoleculeFileError(f"{source} holds no .sdf or .xyz file.")
        return files
    if not source.exists():
        raise MoleculeFileError(f"{source} does not exist.")
    return [source]


def load_custom_molecules(source: str | os.PathLike) -> list[Data]:
    """Every molecule of an SDF/XYZ file or folder as a ``Data`` graph (see ``graphs.py``).

    ``idx`` is the molecule's position in the sorted files, counted from 0.

    Raises:
        MoleculeFileError: a missing, empty or malformed file.
        UnknownElementError: an element outside H, C, N, O, F (names the element and file).
    """
    molecules = [m for path in molecule_files(source) for m in read_molecules(path)]
    if not molecules:
        raise MoleculeFileError(f"{source} holds no molecules.")
    labelled = all(all(name in props for name in PROPERTY_NAMES) for _, _, props in molecules)
    graphs = []
    for i, (z, pos, props) in enumerate(molecules):
        try:
            y = [float(props[name]) for name in PROPERTY_NAMES] if labelled else None
        except ValueError:
            raise MoleculeFileError(f"{source}: molecule {i} has a property that is not a number.") from None
        graphs.append(atoms_to_data(z, pos, y=y, idx=i))
    return graphs
