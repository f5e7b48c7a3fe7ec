"""QM9 (130,831 molecules), read offline from the ``qm9pack`` CSVs and cached as one ``.npz``.

The exact EDM/GeoLDM split and the conditional Da/Db halves follow docs/protocols.md §1.
``qm9pack`` is located with ``importlib`` and never imported: its ``__init__``
needs ``pkg_resources``, which recent Pythons lack.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sci_diffusion.atomic import atomic_path

from ..chem.elements import ATOMIC_NUMBERS
from ..chem.smiles import molecule_smiles

NUM_MOLECULES = 130_831
SPLIT_SIZES = {"train": 100_000, "valid": 17_748, "test": 13_083}
HARTREE_TO_EV = 27.2114

PROPERTY_NAMES: tuple[str, ...] = ("alpha", "gap", "homo", "lumo", "mu", "Cv")
PROPERTY_UNITS: dict[str, str] = {
    "alpha": "Bohr^3",
    "gap": "eV",
    "homo": "eV",
    "lumo": "eV",
    "mu": "D",
    "Cv": "cal/mol K",
}
# property -> (qm9pack column, factor to our unit)
_SOURCE_COLUMNS = {
    "alpha": ("Polarizability_bohr3", 1.0),
    "gap": ("HOMO_LUMO_gap_au", HARTREE_TO_EV),
    "homo": ("HOMO_au", HARTREE_TO_EV),
    "lumo": ("LUMO_au", HARTREE_TO_EV),
    "mu": ("Dipole_debye", 1.0),
    "Cv": ("Heatcapacity_Cv_cal_mol_K", 1.0),
}
_SOURCE_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
# Bump when the cached layout or its content changes; old caches are then rebuilt.
_CACHE_FORMAT = 1
_ARRAYS_FILE = f"qm9_v{_CACHE_FORMAT}.npz"
_TRAIN_SMILES_FILE = f"qm9_train_smiles_v{_CACHE_FORMAT}.txt"


@dataclass(frozen=True)
class QM9Arrays:
    """All of QM9 as flat arrays, one row per molecule, sorted by GDB9 index.

    Attributes:
        positions: [A, 3] float32, Angstrom, all atoms of all molecules concatenated.
        z: [A] uint8 atomic numbers.
        offsets: [M + 1] int64; molecule ``r`` owns atoms ``offsets[r]:offsets[r + 1]``.
        properties: [M, 6] float32 in ``PROPERTY_NAMES`` order and ``PROPERTY_UNITS``.
        index: [M] int64 GDB9 index, 1-based (qm9pack's ``Index``, ``dsgdb9nsd_<index>.xyz``).
        smiles: [M] str, the SMILES given by QM9 (not rebuilt from coordinates).
    """

    positions: np.ndarray
    z: np.ndarray
    offsets: np.ndarray
    properties: np.ndarray
    index: np.ndarray
    smiles: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    @property
    def num_atoms(self) -> np.ndarray:
        """[M] int64 atom count of each molecule."""
        return np.diff(self.offsets)

    def molecule(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Atomic numbers [N] uint8 and positions [N, 3] float32 (Angstrom) of one row (views)."""
        start, stop = self.offsets[row], self.offsets[row + 1]
        return self.z[start:stop], self.positions[start:stop]


def qm9pack_data_dir() -> Path:
    """The ``data/`` folder of the installed ``qm9pack`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec("qm9pack")
    except ImportError:  # an import hook that refuses it counts as absent
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The qm9pack package is not installed: pip install 'sci-diffusion[molecules]'."
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def default_cache_dir() -> Path:
    """``$SCI_DIFFUSION_CACHE/qm9`` if that variable is set, else ``~/.cache/sci-diffusion/qm9``."""
    root = os.environ.get("SCI_DIFFUSION_CACHE")
    root = Path(root) if root else Path.home() / ".cache" / "sci-diffusion"
    return root / "qm9"


def load_qm9(cache_dir: str | os.PathLike | None = None, verbose: bool = False) -> QM9Arrays:
    """Load all 130,831 QM9 molecules, parsing the qm9pack CSVs on first use.

    The first call parses the CSVs (a few seconds) and writes ``qm9_v1.npz``
    (50 MB) atomically into the cache folder; later calls read that file (well under a second).
    The cache is rebuilt when the qm9pack CSVs change size. Where qm9pack is not installed
    (a training machine sent only the cache), an existing cache is used as it is.

    Args:
        cache_dir: folder for the cache; default ``default_cache_dir()``.
        verbose: print what is being done and how long it took.

    Returns:
        The molecules as ``QM9Arrays``, rows sorted by GDB9 index.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = cache_dir / _ARRAYS_FILE
    try:
        sizes = _source_sizes()
    except FileNotFoundError:
        sizes = None  # no qm9pack here: a cache built elsewhere is used as it is
    if cache_file.exists():
        try:
            with np.load(cache_file, allow_pickle=False) as f:
                if sizes is None or np.array_equal(f["source_sizes"], sizes):
                    return QM9Arrays(**{k: f[k] for k in QM9Arrays.__dataclass_fields__})
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # a damaged or foreign cache file: rebuild it below
    start = time.perf_counter()
    if verbose:
        print(f"Parsing QM9 from {qm9pack_data_dir()} (once) ...", flush=True)
    arrays = _parse_qm9pack()
    fields = {k: getattr(arrays, k) for k in QM9Arrays.__dataclass_fields__}
    with atomic_path(cache_file, suffix=".npz") as tmp:
        np.savez(tmp, source_sizes=sizes, **fields)
    if verbose:
        print(f"QM9 cached in {cache_file} ({time.perf_counter() - start:.0f} s).", flush=True)
    return arrays


def edm_split(arrays: QM9Arrays) -> dict[str, np.ndarray]:
    """The exact EDM/GeoLDM split of docs/protocols.md §1, as row indices into ``arrays``.

    ``included`` is the sorted 0-based GDB9 index, and the rows of ``arrays`` are
    sorted the same way, so ``included[perm[a:b]]`` is the molecule of row ``perm[a:b]``.

    Returns:
        ``{"train": [100000], "valid": [17748], "test": [13083]}`` int64 rows, in
        the order of EDM's files.
    """
    if len(arrays) != NUM_MOLECULES or not (np.diff(arrays.index) > 0).all():
        raise ValueError("edm_split needs all 130,831 QM9 molecules sorted by GDB9 index.")
    perm = np.random.RandomState(0).permutation(NUM_MOLECULES)
    n_train, n_valid = SPLIT_SIZES["train"], SPLIT_SIZES["valid"]
    return {
        "train": perm[:n_train],
        "valid": perm[n_train : n_train + n_valid],
        "test": perm[n_train + n_valid :],
    }


def conditional_halves(train_rows: np.ndarray) -> dict[str, np.ndarray]:
    """EDM's conditional halves of the train split: Da (property classifier) and Db (generator).

    EDM's train file lists its molecules in archive order, which is ascending GDB9 index, and
    ``qm9/data/utils.py`` permutes *that* list (docs/protocols.md §1 step 4). The rows of
    ``QM9Arrays`` are sorted by GDB9 index too, so sorting the rows gives EDM's file order.

    Args:
        train_rows: [100000] rows of the train split, in any order.

    Returns:
        ``{"Da": [50000], "Db": [50000]}`` rows: ``sort(train)[p[:50000]]`` and
        ``sort(train)[p[50000:]]`` with ``p = RandomState(42).permutation(100000)``.
    """
    train_sorted = np.sort(np.asarray(train_rows))
    p = np.random.RandomState(42).permutation(len(train_sorted))
    half = len(train_sorted) // 2
    return {"Da": train_sorted[p[:half]], "Db": train_sorted[p[half:]]}


def atom_count_histogram(num_atoms: np.ndarray) -> dict[int, int]:
    """Histogram of atom counts, ``{n_atoms: n_molecules}`` sorted by ``n_atoms``.

    Args:
        num_atoms: [M] atom count per molecule, e.g. ``arrays.num_atoms[train_rows]``.
    """
    counts, freq = np.unique(np.asarray(num_atoms), return_counts=True)
    return {int(c): int(f) for c, f in zip(counts, freq)}


def rebuilt_smiles(arrays: QM9Arrays, rows: np.ndarray) -> list[str]:
    """SMILES of ``rows`` rebuilt from their 3D coordinates with the EDM bond rule.

    As EDM's ``compute_qm9_smiles``: the SMILES of the whole sanitized molecule
    (explicit H kept), and molecules that fail sanitizing are left out.
    """
    out = []
    for row in rows:
        smiles = molecule_smiles(*arrays.molecule(int(row)), largest_fragment=False)
        if smiles is not None:
            out.append(smiles)
    return out


def train_smiles(cache_dir: str | os.PathLike | None = None, verbose: bool = False) -> frozenset[str]:
    """SMILES of the EDM train split rebuilt with the EDM bond rule: the novelty reference.

    Computed once (about 20 s on one core) and cached as text next to the arrays.

    Args:
        cache_dir: folder for the cache; default ``default_cache_dir()``.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = cache_dir / _TRAIN_SMILES_FILE
    if not cache_file.exists():
        arrays = load_qm9(cache_dir, verbose=verbose)
        if verbose:
            print("Rebuilding the SMILES of the QM9 train split (once) ...", flush=True)
        smiles = rebuilt_smiles(arrays, edm_split(arrays)["train"])
        with atomic_path(cache_file) as tmp:
            tmp.write_text("\n".join(smiles) + "\n")
    return frozenset(cache_file.read_text().split())


def _source_sizes() -> np.ndarray:
    folder = qm9pack_data_dir()
    return np.array([(folder / name).stat().st_size for name in _SOURCE_FILES], dtype=np.int64)


def _parse_qm9pack() -> QM9Arrays:
    folder = qm9pack_data_dir()
    csv.field_size_limit(1 << 30)
    index, smiles, n_atoms, elements, xyz, props = [], [], [], [], [], []
    for name in _SOURCE_FILES:
        with open(folder / name, newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            col = {c: i for i, c in enumerate(header)}
            prop_cols = [(col[c], factor) for c, factor in (_SOURCE_COLUMNS[p] for p in PROPERTY_NAMES)]
            for r in reader:
                index.append(int(r[col["Index"]]))
                smiles.append(r[col["SMILES"]])
                n_atoms.append(int(r[col["N_atoms"]]))
                elements.append(r[col["Elements"]])
                xyz.append(r[col["XYZ_Ang"]])
                props.append([float(r[c]) * factor for c, factor in prop_cols])
    if len(index) != NUM_MOLECULES:
        raise ValueError(f"qm9pack in {folder} holds {len(index)} molecules, expected {NUM_MOLECULES}.")

    order = np.argsort(np.array(index), kind="stable")
    n_atoms = np.array(n_atoms, dtype=np.int64)[order]
    # Elements look like "['C','H','H']" and XYZ_Ang like "[[x,y,z],[x,y,z]]".
    symbols = ",".join(elements[i][1:-1] for i in order).replace("'", "").split(",")
    z = np.array([ATOMIC_NUMBERS[s] for s in symbols], dtype=np.uint8)
    coords = ",".join(xyz[i] for i in order).replace("[", "").replace("]", "").split(",")
    positions = np.array(coords, dtype=np.float64).astype(np.float32).reshape(-1, 3)
    offsets = np.concatenate([[0], np.cumsum(n_atoms)])
    if len(z) != offsets[-1] or len(positions) != offsets[-1]:
        raise ValueError(f"qm9pack in {folder}: Elements, XYZ_Ang and N_atoms disagree.")
    return QM9Arrays(
        positions=positions,
        z=z,
        offsets=offsets,
        properties=np.array(props, dtype=np.float64)[order].astype(np.float32),
        index=np.array(index, dtype=np.int64)[order],
        smiles=np.array(smiles)[order],
    )
