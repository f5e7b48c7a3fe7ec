"""The element table of the molecules domain: H, C, N, O and F, as in QM9.

Atom types are indexed 0..4 in the order of ``ATOM_TYPES``; that index is the
column of the one-hot feature and the row of the bond-length tables in
``bonds.py``.
"""

from __future__ import annotations

import os

import numpy as np

ATOM_TYPES: tuple[str, ...] = ("H", "C", "N", "O", "F")
ATOMIC_NUMBERS: dict[str, int] = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
SYMBOLS: dict[int, str] = {number: symbol for symbol, number in ATOMIC_NUMBERS.items()}
# Summed bond order of a stable atom (EDM's allowed_bonds for QM9).
VALENCES: dict[str, int] = {"H": 1, "C": 4, "N": 3, "O": 2, "F": 1}

# atomic number -> type index, -1 where the element is not one of ours.
_TYPE_OF_NUMBER = np.full(128, -1, dtype=np.int64)
for _i, _symbol in enumerate(ATOM_TYPES):
    _TYPE_OF_NUMBER[ATOMIC_NUMBERS[_symbol]] = _i
VALENCE_OF_TYPE = np.array([VALENCES[s] for s in ATOM_TYPES], dtype=np.int64)


class UnknownElementError(ValueError):
    """An element outside H, C, N, O, F; the message names the element and the file."""

    def __init__(self, element: str | int, path: str | os.PathLike | None = None):
        self.element = element
        self.path = None if path is None else os.fspath(path)
        where = f" in {self.path}" if self.path else ""
        super().__init__(
            f"Unknown element {element!r}{where}: the molecules domain knows only "
            f"{', '.join(ATOM_TYPES)}."
        )


def atomic_number(symbol: str, path: str | os.PathLike | None = None) -> int:
    """Atomic number of an element symbol (case-insensitive), e.g. ``"c"`` -> 6.

    Raises:
        UnknownElementError: the symbol is not one of ``ATOM_TYPES``.
    """
    number = ATOMIC_NUMBERS.get(symbol.strip().capitalize())
    if number is None:
        raise UnknownElementError(symbol, path)
    return number


def type_index(z, path: str | os.PathLike | None = None) -> np.ndarray:
    """Atom-type indices (0..4, in ``ATOM_TYPES`` order) of atomic numbers.

    Args:
        z: [N] atomic numbers (array-like or a CPU tensor).
        path: the file the atoms came from, named in the error.

    Returns:
        [N] int64 indices.

    Raises:
        UnknownElementError: an atomic number outside H, C, N, O, F.
    """
    z = np.asarray(z, dtype=np.int64).reshape(-1)
    inside = (z >= 0) & (z < len(_TYPE_OF_NUMBER))
    types = np.full(z.shape, -1, dtype=np.int64)
    types[inside] = _TYPE_OF_NUMBER[z[inside]]
    if (types < 0).any():
        bad = int(z[types < 0][0])
        raise UnknownElementError(_element_name(bad), path)
    return types


def one_hot(z, path: str | os.PathLike | None = None) -> np.ndarray:
    """One-hot atom types over H, C, N, O, F.

    Args:
        z: [N] atomic numbers.

    Returns:
        [N, 5] float32.
    """
    return np.eye(len(ATOM_TYPES), dtype=np.float32)[type_index(z, path)]


def _element_name(number: int) -> str:
    from rdkit import Chem

    if 1 <= number <= 118:
        return Chem.GetPeriodicTable().GetElementSymbol(number)
    return f"Z={number}"  # not an element at all
