"""QM9's bond orders and formal charges, from its SMILES matched to its DFT coordinates (as MiDi takes them
from RDKit), cached once beside the QM9 arrays.

For each molecule (``match_bonds``):

1. the SMILES qm9pack gives (QM9's GDB-17 SMILES) becomes an RDKit molecule with explicit hydrogens,
   kekulized: every bond single, double or triple;
2. the coordinates give a connectivity: of the pairs closer than 1.3 x the sum of their covalent radii
   (``rdDetermineBonds.DetermineConnectivity``'s rule), the ``B`` with the smallest distance / radii sum,
   ``B`` being the SMILES' bond count. (Taking every pair under 1.3 x adds 1.8-1.95 A carbon pairs
   across strained small rings to 5.8 % of the molecules, so their graphs no longer match);
3. the SMILES graph, with every bond made single and every charge zeroed, is matched onto that
   connectivity by element (``GetSubstructMatch``). Equal atom and bond counts make a match an
   isomorphism, so each SMILES bond lands on one coordinate pair, which takes its order; each atom
   takes its formal charge.

A molecule whose SMILES does not parse, has other atoms, has more bonds than pairs within 1.3 x, or
whose graph does not match, is counted unmatched (``QM9Bonds.matched``). Training drops the unmatched
molecules; the evaluation references never do (``data/bond_datamodule.py``).

**Kekulized, not aromatic.** MiDi's bond classes include aromatic, counted 1.5 in its valence sum. On
QM9 with hydrogens that makes real molecules unstable under that same metric: a pyrrole N-H sums
1.5 + 1.5 + 1 = 4 and a furan O 1.5 + 1.5 = 3, neither an allowed valence of a neutral N or O.
Kekulé bonds give integer valences that the metric accepts for every matched neutral molecule, so
the model learns bonds the metric can score. (MiDi's own QM9 loader reads ``gdb9.sdf`` unsanitized,
whose bond block is Kekulé too, so its QM9 data holds no aromatic bonds either.) The aromatic class
stays in the vocabulary (``chem/bond_types.py``) for other data.

Computing all 130,831 molecules takes about 70 s of one core (``load_qm9_bonds(verbose=True)``
prints it); the cache (``qm9_bonds_v1.npz``, a few MB) then loads in well under a second, without RDKit.
"""
from __future__ import annotations

import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sci_diffusion.atomic import atomic_path

from ..chem.bond_stability import largest_fragment_smiles
from ..chem.bond_types import bond_matrix
from .qm9 import QM9Arrays, default_cache_dir, edm_split, load_qm9

_CACHE_FORMAT = 1  # bump when the matching rule or the layout changes; old caches are then rebuilt
_BONDS_FILE = f"qm9_bonds_v{_CACHE_FORMAT}.npz"
_TRAIN_SMILES_FILE = f"qm9_train_bond_smiles_v{_CACHE_FORMAT}.txt"
CONNECTIVITY_FACTOR = 1.3  # RDKit's DetermineConnectivity covFactor: a bond is shorter than 1.3 x (r_i + r_j)
# Covalent radii (Angstrom) of QM9's elements, RDKit's GetRcovalent (written out so reading needs no RDKit).
COVALENT_RADII = {1: 0.31, 6: 0.76, 7: 0.71, 8: 0.66, 9: 0.57}


@dataclass(frozen=True)
class QM9Bonds:
    """QM9's bonds, one block per molecule, rows as in :class:`~.qm9.QM9Arrays` (sorted by GDB9 index).

    Attributes:
        pairs: ``[B, 2]`` uint8, the two atoms of each bond, indices within their molecule (``i < j``).
        orders: ``[B]`` uint8 bond classes of ``chem/bond_types.BOND_CLASSES`` (1, 2, 3: kekulized).
        offsets: ``[M + 1]`` int64; molecule ``r`` owns bonds ``offsets[r]:offsets[r + 1]``.
        formal_charges: ``[A]`` int8 per atom, in the atom order of ``QM9Arrays`` (0 where unmatched).
        matched: ``[M]`` bool, whether the molecule's SMILES matched its coordinates (no bonds where not).
    """

    pairs: np.ndarray
    orders: np.ndarray
    offsets: np.ndarray
    formal_charges: np.ndarray
    matched: np.ndarray

    def molecule(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """``(pairs [b, 2] int64, orders [b] int64)`` of one row."""
        start, stop = self.offsets[row], self.offsets[row + 1]
        return self.pairs[start:stop].astype(np.int64), self.orders[start:stop].astype(np.int64)

    def matrix(self, row: int, num_atoms: int) -> np.ndarray:
        """The ``[n, n]`` int64 symmetric matrix of bond classes of one row (``chem/bond_types.bond_matrix``)."""
        return bond_matrix(num_atoms, *self.molecule(row))


def load_qm9_bonds(cache_dir: str | os.PathLike | None = None, verbose: bool = False) -> QM9Bonds:
    """QM9's bonds and formal charges (module docstring), computed on first use and cached atomically as
    ``qm9_bonds_v1.npz`` beside the QM9 arrays (``qm9.default_cache_dir()``).

    Args:
        cache_dir: the QM9 cache folder; default ``default_cache_dir()``.
        verbose: print what is being done, how long it took and how many molecules did not match.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = cache_dir / _BONDS_FILE
    arrays = load_qm9(cache_dir, verbose=verbose)
    if cache_file.exists():
        try:
            with np.load(cache_file, allow_pickle=False) as f:
                if np.array_equal(f["index"], arrays.index):  # the bonds of these very molecules
                    return QM9Bonds(**{k: f[k] for k in QM9Bonds.__dataclass_fields__})
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # a damaged or foreign cache file: rebuild it below
    start = time.perf_counter()
    if verbose:
        print("Matching QM9's SMILES to its coordinates for bond orders (once) ...", flush=True)
    bonds = match_all(arrays)
    fields = {k: getattr(bonds, k) for k in QM9Bonds.__dataclass_fields__}
    with atomic_path(cache_file, suffix=".npz") as tmp:
        np.savez(tmp, index=arrays.index, **fields)
    if verbose:
        print(f"QM9 bonds cached in {cache_file} ({time.perf_counter() - start:.0f} s; "
              f"{int((~bonds.matched).sum())} of {len(arrays)} molecules unmatched).", flush=True)
    return bonds


def train_bond_smiles(cache_dir: str | os.PathLike | None = None, verbose: bool = False) -> frozenset[str]:
    """SMILES of the EDM train split's matched molecules built from their own bonds and charges by MiDi's rule
    (the largest fragment, sanitized; ``chem/bond_stability.largest_fragment_smiles``): the novelty reference
    of the bond-based metric (``evaluation/metrics.evaluate_generated_bonds``), as ``qm9.train_smiles`` is the
    EDM metric's. Computed once and cached as text beside the bonds."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = cache_dir / _TRAIN_SMILES_FILE
    if not cache_file.exists():
        arrays, bonds = load_qm9(cache_dir, verbose=verbose), load_qm9_bonds(cache_dir, verbose=verbose)
        if verbose:
            print("Building the SMILES of the QM9 train split from its bonds (once) ...", flush=True)
        smiles = []
        for row in edm_split(arrays)["train"]:
            if bonds.matched[row]:
                z, _ = arrays.molecule(int(row))
                charges = bonds.formal_charges[arrays.offsets[row]:arrays.offsets[row + 1]]
                found, _ = largest_fragment_smiles(z, bonds.matrix(int(row), len(z)), charges)
                smiles += [found] if found is not None else []
        with atomic_path(cache_file) as tmp:
            tmp.write_text("\n".join(smiles) + "\n")
    return frozenset(cache_file.read_text().split())


def match_all(arrays: QM9Arrays) -> QM9Bonds:
    """:func:`match_bonds` for every molecule of ``arrays``, gathered into a :class:`QM9Bonds`."""
    pairs, orders, counts = [], [], []
    charges = np.zeros(len(arrays.z), dtype=np.int8)
    matched = np.zeros(len(arrays), dtype=bool)
    for row in range(len(arrays)):
        z, pos = arrays.molecule(row)
        found = match_bonds(z, pos, str(arrays.smiles[row]))
        if found is None:
            counts.append(0)
            continue
        p, o, q = found
        pairs.append(p)
        orders.append(o)
        counts.append(len(o))
        charges[arrays.offsets[row]:arrays.offsets[row + 1]] = q
        matched[row] = True
    return QM9Bonds(pairs=np.concatenate(pairs).astype(np.uint8), orders=np.concatenate(orders).astype(np.uint8),
                    offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), formal_charges=charges,
                    matched=matched)


def distance_connectivity(z: np.ndarray, pos: np.ndarray, num_bonds: int) -> np.ndarray | None:
    """The ``num_bonds`` pairs most surely bonded by distance (step 2 of the module docstring): ``[num_bonds, 2]``
    int64 ``i < j``, or None if fewer pairs than that lie within 1.3 x their covalent radii sum."""
    radii = np.array([COVALENT_RADII[int(n)] for n in z])
    pos = np.asarray(pos, dtype=np.float64)
    i, j = np.triu_indices(len(z), k=1)
    ratio = np.linalg.norm(pos[i] - pos[j], axis=1) / (radii[i] + radii[j])
    nearest = np.argsort(ratio, kind="stable")[:num_bonds]
    if len(nearest) < num_bonds or (num_bonds and ratio[nearest[-1]] >= CONNECTIVITY_FACTOR):
        return None
    return np.stack([i[nearest], j[nearest]], axis=1)


def match_bonds(z, pos, smiles: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A molecule's bonds from its SMILES matched to its coordinates (module docstring, steps 1-3).

    Args:
        z: ``[N]`` atomic numbers (H, C, N, O, F); pos: ``[N, 3]`` Angstrom; smiles: the molecule's SMILES.

    Returns:
        ``(pairs [B, 2] int64 with i < j, orders [B] int64 in 1..3, formal_charges [N] int64)`` in the
        coordinates' atom order, or None where the SMILES does not match the coordinates.
    """
    # RDKit: optional; reading the cached bonds (training) runs without it, only building the cache needs it
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    with BlockLogs():
        template = Chem.MolFromSmiles(smiles)
        if template is None:
            return None
        template = Chem.AddHs(template)
        Chem.Kekulize(template, clearAromaticFlags=True)
    z = np.asarray(z, dtype=np.int64)
    if sorted(a.GetAtomicNum() for a in template.GetAtoms()) != sorted(z.tolist()):
        return None
    connected = distance_connectivity(z, pos, template.GetNumBonds())
    if connected is None:
        return None
    graph = Chem.RWMol()
    for number in z:
        graph.AddAtom(Chem.Atom(int(number)))
    for i, j in connected:
        graph.AddBond(int(i), int(j), Chem.BondType.SINGLE)
    query = Chem.RWMol(template)  # the SMILES' graph: elements and connections only
    for bond in query.GetBonds():
        bond.SetBondType(Chem.BondType.SINGLE)
    for atom in query.GetAtoms():
        atom.SetFormalCharge(0)
    to_coordinates = graph.GetSubstructMatch(query)  # template atom k is coordinate atom to_coordinates[k]
    if not to_coordinates:
        return None
    where = np.asarray(to_coordinates, dtype=np.int64)
    charges = np.zeros(len(z), dtype=np.int64)
    charges[where] = [a.GetFormalCharge() for a in template.GetAtoms()]
    ends = np.array([[b.GetBeginAtomIdx(), b.GetEndAtomIdx()] for b in template.GetBonds()], dtype=np.int64)
    pairs = np.sort(where[ends.reshape(-1, 2)], axis=1)
    orders = np.array([int(b.GetBondTypeAsDouble()) for b in template.GetBonds()], dtype=np.int64)
    return pairs, orders, charges
