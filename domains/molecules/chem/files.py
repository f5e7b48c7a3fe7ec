"""Molecule files: read SDF/XYZ, stream samples to SDF/XYZ, draw a PNG grid, write atomically.

A molecule read from a file is ``(z, pos, properties)``: [N] int64 atomic numbers,
[N, 3] float64 positions in Angstrom, and a ``dict[str, str]`` of SD properties
(SDF) or ``key=value`` pairs of the comment line (XYZ); with ``with_charges`` a fourth
item, the [N] int64 formal charges (an SDF's atom charges; zeros for XYZ). Bonds
stored in an SDF are ignored by the EDM metric, which decides bonds from coordinates; a bond-aware
model's samples carry their generated bonds (``MoleculeWriter.write(..., bonds=)``, marked
``bond_source=generated``), which :func:`read_generated_bonds` reads back for the bond-based metric. Any
element of ``elements.KNOWN_ELEMENTS`` is read; a model checks its own element set.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from sci_diffusion.atomic import atomic_path

from .bond_types import bond_classes_of, mol_from_bond_types
from .bonds import to_rdkit_mol
from .elements import SYMBOLS, atomic_number, check_known

MOLECULE_SUFFIXES = (".sdf", ".xyz")
GENERATED_BONDS = ("bond_source", "generated")  # the SD field and value of records whose bonds a model generated


class MoleculeFileError(ValueError):
    """A molecule file that is missing, of an unknown kind, or malformed; the message names it."""


def read_molecules(path: str | os.PathLike, with_charges: bool = False) -> list[tuple]:
    """Read every molecule of a multi-molecule ``.sdf`` or multi-frame ``.xyz`` file.

    Returns:
        ``[(z [N] int64, pos [N, 3] float64 Angstrom, properties), ...]`` in file order; with
        ``with_charges``, ``(z, pos, properties, formal_charges [N] int64)``.

    Raises:
        MoleculeFileError: the file is missing, not ``.sdf``/``.xyz``, malformed, or has
            non-finite coordinates.
        UnknownElementError: an element without EDM bond lengths (``elements.KNOWN_ELEMENTS``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MOLECULE_SUFFIXES:
        raise MoleculeFileError(f"{path} is not an SDF or XYZ file (expected a .sdf or .xyz name).")
    if not path.is_file():
        raise MoleculeFileError(f"{path} does not exist.")
    if path.stat().st_size == 0:
        raise MoleculeFileError(f"{path} is empty: it holds no molecule.")
    molecules = _read_sdf(path) if suffix == ".sdf" else _read_xyz(path)
    for k, (_, pos, _, _) in enumerate(molecules, start=1):
        if not np.isfinite(pos).all():
            raise MoleculeFileError(f"{path}: molecule {k} has coordinates that are not finite numbers.")
    return molecules if with_charges else [m[:3] for m in molecules]


def _read_sdf(path: Path) -> list[tuple]:
    # RDKit: optional; training imports this module and runs without it (tests/molecules/test_training_without_rdkit.py)
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    molecules = []
    with BlockLogs():  # a bad record gets our one-sentence error instead of RDKit's log
        supplier = Chem.SDMolSupplier(str(path), sanitize=False, removeHs=False, strictParsing=False)
        for record, mol in enumerate(supplier, start=1):
            if mol is None:
                raise MoleculeFileError(f"{path}: record {record} is not a readable SDF molecule.")
            if mol.GetNumConformers() == 0:
                raise MoleculeFileError(f"{path}: record {record} has no coordinates.")
            z = check_known([atom.GetAtomicNum() for atom in mol.GetAtoms()], path)
            charges = np.array([atom.GetFormalCharge() for atom in mol.GetAtoms()], dtype=np.int64)
            pos = mol.GetConformer().GetPositions()
            props = {name: mol.GetProp(name) for name in mol.GetPropNames()}
            molecules.append((z, pos, props, charges))
    return molecules


def read_generated_bonds(path: str | os.PathLike) -> list[np.ndarray] | None:
    """The bonds a bond-aware model generated, read back from its samples: one ``[N, N]`` int64 matrix of bond
    classes (``bond_types.BOND_CLASSES``) per record of an SDF whose every record is marked
    ``bond_source=generated``; None for an XYZ file or an SDF with any other record (their bonds are a rule's).

    Raises:
        MoleculeFileError: a generated record with a bond outside the classes.
    """
    path = Path(path)
    if path.suffix.lower() != ".sdf":
        return None
    # RDKit: optional; training imports this module and runs without it (tests/molecules/test_training_without_rdkit.py)
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    key, value = GENERATED_BONDS
    matrices = []
    with BlockLogs():
        for record, mol in enumerate(Chem.SDMolSupplier(str(path), sanitize=False, removeHs=False,
                                                        strictParsing=False), start=1):
            if mol is None or not mol.HasProp(key) or mol.GetProp(key) != value:
                return None
            try:
                matrices.append(bond_classes_of(mol))
            except ValueError as exc:
                raise MoleculeFileError(f"{path}: record {record} has {exc}.") from None
    return matrices or None


def _read_xyz(path: Path) -> list[tuple]:
    lines = path.read_text(errors="replace").splitlines()
    molecules, i = [], 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        try:
            n = int(lines[i].strip())
        except ValueError:
            raise MoleculeFileError(
                f"{path}: line {i + 1} should hold an atom count but reads {lines[i].strip()[:40]!r}."
            ) from None
        if n < 0 or i + 2 + n > len(lines):
            raise MoleculeFileError(f"{path}: the molecule at line {i + 1} is cut short.")
        z, pos = np.zeros(n, dtype=np.int64), np.zeros((n, 3))
        for k, line in enumerate(lines[i + 2 : i + 2 + n]):
            fields = line.split()
            try:
                if len(fields) < 4:
                    raise ValueError
                pos[k] = [float(v) for v in fields[1:4]]
            except ValueError:
                raise MoleculeFileError(
                    f"{path}: line {i + 3 + k} is not 'element x y z' but {line.strip()[:40]!r}."
                ) from None
            element = fields[0]
            z[k] = int(element) if element.isdigit() else atomic_number(element, path)
        check_known(z, path)
        molecules.append((z, pos, _parse_comment(lines[i + 1]), np.zeros(n, dtype=np.int64)))
        i += 2 + n
    return molecules


def _parse_comment(comment: str) -> dict[str, str]:
    """``key=value`` pairs of an XYZ comment line (values may be shell-quoted); other words are ignored."""
    try:
        words = shlex.split(comment)
    except ValueError:  # unbalanced quotes: not written by us, keep what splits plainly
        words = comment.split()
    return dict(word.split("=", 1) for word in words if "=" in word)


class MoleculeWriter:
    """Streams molecules to one ``.sdf`` or ``.xyz`` file, chunk by chunk.

    Records go to ``path + ".partial"``, flushed every ``chunk_size`` molecules;
    ``close()`` renames that file to ``path``. If the writing is interrupted, the
    ``.partial`` file keeps the chunks already flushed (and is removed if it holds none) and ``path`` is
    never half written. SDF records carry a 3D conformer, EDM bonds and the properties as SD
    fields; XYZ records carry the properties as ``key=value`` in the comment line. ``bonds``
    (``"edm"`` or ``"rdkit"``) picks the rule for the SDF bond block (see ``bonds.to_rdkit_mol``);
    a molecule written with its own bonds (a bond-aware model's) carries those instead, marked
    ``bond_source=generated``.

    Example::

        with MoleculeWriter("samples.sdf") as writer:
            writer.write(z, pos, {"sampler": "dpmpp2m", "SYNTHETIC": 1})
    """

    def __init__(self, path: str | os.PathLike, chunk_size: int = 100, bonds: str = "edm"):
        self.path = Path(path)
        self.bonds = bonds
        self.format = self.path.suffix.lower()
        if self.format not in MOLECULE_SUFFIXES:
            raise MoleculeFileError(f"{self.path} must end in .sdf or .xyz to be written.")
        self.partial_path = Path(f"{self.path}.partial")
        self.chunk_size = chunk_size
        self.count = 0
        self._pending: list[str] = []
        self.partial_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.partial_path, "w")

    def write(self, z, pos, properties: Mapping[str, object] | None = None, charges=None, bonds=None) -> None:
        """Append one molecule: [N] atomic numbers, [N, 3] Angstrom, its properties and, for an
        SDF, its [N] formal charges (None: neutral) and its [N, N] bond classes (``bond_types.BOND_CLASSES``,
        a bond-aware model's; None: the writer's rule). XYZ has no place for charges or bonds."""
        if self.format == ".sdf":
            self._pending.append(_sdf_record(z, pos, properties or {}, self.bonds, charges, bonds))
        else:
            self._pending.append(_xyz_record(z, pos, properties or {}))
        self.count += 1
        if len(self._pending) >= self.chunk_size:
            self.flush()

    def write_many(self, molecules: Iterable[tuple]) -> None:
        """Append ``(z, pos)`` or ``(z, pos, properties)`` tuples."""
        for molecule in molecules:
            self.write(*molecule)

    def flush(self) -> None:
        """Write the pending records to the ``.partial`` file and flush it to the OS."""
        self._file.write("".join(self._pending))
        self._file.flush()
        self._pending.clear()

    def close(self) -> Path:
        """Flush, then rename ``.partial`` to the final name. Returns the final path."""
        if not self._file.closed:
            self.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.partial_path, self.path)
        return self.path

    def __enter__(self) -> MoleculeWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # keep what was flushed in .partial; never publish a half file under the final name
            self.flush()
            self._file.close()
            if self.count == 0:  # a refusal before the first molecule: nothing to salvage, no empty file left
                self.partial_path.unlink(missing_ok=True)


def _sdf_record(z, pos, properties: Mapping[str, object], bonds: str = "edm", charges=None, bond_types=None) -> str:
    # RDKit: optional; training imports this module and runs without it (tests/molecules/test_training_without_rdkit.py)
    from rdkit import Chem

    if bond_types is None:
        mol = to_rdkit_mol(z, pos, bonds, charges)
    else:
        check_known(z)
        mol = mol_from_bond_types(z, bond_types, charges, pos).GetMol()
        mol.UpdatePropertyCache(strict=False)
        properties = {**properties, GENERATED_BONDS[0]: GENERATED_BONDS[1]}
    for key, value in properties.items():
        mol.SetProp(str(key), str(value))
    return Chem.SDWriter.GetText(mol, kekulize=False)


def _xyz_record(z, pos, properties: Mapping[str, object]) -> str:
    z = np.asarray(z).reshape(-1)
    pos = np.asarray(pos, dtype=np.float64).reshape(-1, 3)
    check_known(z)
    for key in properties:
        if not str(key) or any(c.isspace() or c == "=" for c in str(key)):
            raise ValueError(f"XYZ property names need no spaces or '=': {key!r}.")
    comment = " ".join(f"{key}={shlex.quote(str(value))}" for key, value in properties.items())
    atoms = "".join(
        f"{SYMBOLS[int(n)]:<2s} {x:14.8f} {y:14.8f} {w:14.8f}\n" for n, (x, y, w) in zip(z, pos)
    )
    return f"{len(z)}\n{comment}\n{atoms}"


def copy_records(source: str | os.PathLike, target: str | os.PathLike, indices: Iterable[int]) -> int:
    """Copy the records of ``source`` (an SDF or XYZ that ``MoleculeWriter`` wrote, each record carrying its
    ``index``) whose index is in ``indices`` to ``target`` (same format), text unchanged, in ``source``'s order,
    atomically. Returns how many were copied."""
    source, wanted = Path(source), {int(i) for i in indices}
    text = source.read_text()
    if source.suffix.lower() == ".sdf":
        records = [r + "$$$$\n" for r in text.split("$$$$\n") if r.strip()]
        index_of = [re.search(r"^> +<index>[^\n]*\n(\d+) *$", r, re.M) for r in records]
    else:
        lines, records, start = text.splitlines(keepends=True), [], 0
        while start < len(lines):
            size = int(lines[start])
            records.append("".join(lines[start:start + size + 2]))
            start += size + 2
        index_of = [re.search(r"(?:^|\s)index=(\d+)(?:\s|$)", r.splitlines()[1]) for r in records]
    kept = [r for r, m in zip(records, index_of) if m is not None and int(m.group(1)) in wanted]
    with atomic_path(target, suffix=source.suffix.lower()) as tmp:
        tmp.write_text("".join(kept))
    return len(kept)


def write_xyz_frames(path: str | os.PathLike, frames: Iterable[tuple]) -> Path:
    """Write ``(z [N], pos [N, 3] Angstrom, properties)`` frames as one multi-frame XYZ file, atomically
    (the layout of :class:`MoleculeWriter`'s XYZ records; ``read_molecules`` reads it back)."""
    text = "".join(_xyz_record(z, pos, properties) for z, pos, properties in frames)
    with atomic_path(path, suffix=".xyz") as tmp:
        tmp.write_text(text)
    return Path(path)


class DrawingError(RuntimeError):
    """RDKit could not render molecules to PNG (e.g. it was built without Cairo)."""


def draw_grid_png(
    mols: Iterable,
    path: str | os.PathLike,
    n: int = 16,
    mols_per_row: int = 4,
    size: int = 250,
    legends: list[str] | None = None,
) -> Path:
    """Draw the first ``n`` molecules as a grid of 2D depictions into a PNG file.

    Args:
        mols: ``Chem.Mol`` objects, or ``(z, pos[, properties or formal charges])`` tuples (bonds by
            the EDM rule).
        path: the PNG to write (atomically).
        n: how many molecules to draw.
        mols_per_row: grid width.
        size: pixels per molecule (square).
        legends: a caption per drawn molecule.

    Raises:
        DrawingError: RDKit's PNG drawing failed.
    """
    # RDKit: optional; training imports this module and runs without it (tests/molecules/test_training_without_rdkit.py)
    from rdkit.Chem import Draw

    depictions = [_depiction(mol) for mol in list(mols)[:n]]
    if not depictions:
        raise ValueError(f"No molecules to draw into {path}.")
    try:
        image = Draw.MolsToGridImage(
            depictions,
            molsPerRow=mols_per_row,
            subImgSize=(size, size),
            legends=legends[: len(depictions)] if legends else None,
            returnPNG=False,
        )
        with atomic_path(path, suffix=".png") as tmp:
            image.save(tmp, format="PNG")
    except (ImportError, RuntimeError, ValueError, OSError) as error:
        raise DrawingError(f"Could not draw molecules into {path}: {error}") from error
    return Path(path)


def _depiction(mol):
    """A 2-D depiction's molecule: a ``Chem.Mol`` copied, or ``(z, pos[, properties or formal charges])`` with bonds by
    the EDM rule; a sane molecule without its hydrogens, an invalid one as it is; 2-D coordinates computed."""
    # RDKit: optional; training imports this module and runs without it (tests/molecules/test_training_without_rdkit.py)
    from rdkit import Chem
    from rdkit.Chem import rdDepictor
    from rdkit.rdBase import BlockLogs

    if isinstance(mol, Chem.Mol):
        mol = Chem.Mol(mol)
    else:
        charges = mol[2] if len(mol) > 2 and isinstance(mol[2], np.ndarray) else None
        mol = to_rdkit_mol(mol[0], mol[1], charges=charges)
    try:
        with BlockLogs():  # lone hydrogens of generated fragments are expected, not news
            Chem.SanitizeMol(mol)
            mol = Chem.RemoveHs(mol)
    except (ValueError, RuntimeError):
        mol.UpdatePropertyCache(strict=False)
        Chem.FastFindRings(mol)
    mol.RemoveAllConformers()
    rdDepictor.Compute2DCoords(mol)
    return mol


def depiction_svg(mol, width: int = 150, height: int = 110) -> str:
    """One molecule's 2-D depiction as a small SVG element (no XML header, transparent background), to inline
    in a page.

    Args:
        mol: a ``Chem.Mol``, or ``(z, pos[, formal charges])`` as for :func:`draw_grid_png`.
        width, height: its size in CSS pixels.
    """
    # RDKit: optional; training imports this module and runs without it (tests/molecules/test_training_without_rdkit.py)
    from rdkit.Chem.Draw import rdMolDraw2D

    drawer = rdMolDraw2D.MolDraw2DSVG(width, height, -1, -1, True)  # True: atom labels as <text>, not paths (smaller)
    options = drawer.drawOptions()
    options.clearBackground = False
    options.prepareMolsBeforeDrawing = False  # _depiction prepared it; an invalid molecule cannot be kekulised
    drawer.DrawMolecule(_depiction(mol))
    drawer.FinishDrawing()
    text = drawer.GetDrawingText()
    return text[text.index("<svg"):].strip()
