"""Element sets: which elements a model's atom-type one-hot spans, and what the bond rule knows.

Two layers:

* **The bond rule's periodic table** (``KNOWN_ELEMENTS``): every element EDM's bond-length
  tables cover (H, B, C, N, O, F, Si, P, S, Cl, As, Br, I). Reading, writing and scoring
  molecules (``files.py``, ``bonds.py``, ``stability.py``, ``evaluation/metrics.py``) accept any of them,
  whatever the model.
* **A model's element set** (:class:`ElementSet`): the ordered symbols whose one-hot columns
  the model diffuses, and whether it also diffuses formal charges. It is part of the training
  data (``QM9DataModule(elements=...)``) and of the checkpoint (``MoleculeDiffusion(elements=...)``,
  saved in its hyperparameters). QM9's is ``QM9_ELEMENTS``: H, C, N, O, F without charges, the
  default of every bundled model.

Type indices are positions in ``ElementSet.symbols``; ``ATOM_TYPES``, ``type_index`` and
``one_hot`` at module level are those of ``QM9_ELEMENTS``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

import numpy as np

# EDM's allowed_bonds for QM9's elements (docs/protocols.md §1); the others take RDKit's valence
# lists (see ``allowed_valences``).
VALENCES: dict[str, int] = {"H": 1, "C": 4, "N": 3, "O": 2, "F": 1}
KNOWN_ELEMENTS: tuple[str, ...] = ("H", "B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "As", "Br", "I")


@cache
def _periodic_table():
    # RDKit: optional; training imports this module and runs without it (tests/molecules/test_training_without_rdkit.py)
    from rdkit import Chem

    return Chem.GetPeriodicTable()


# Written out rather than read from RDKit's periodic table, so that training on a machine without
# RDKit (a lent GPU, scripts/device_resume_qm9.sh) can import the data modules;
# tests/molecules/test_training_without_rdkit.py checks it against RDKit.
ATOMIC_NUMBERS: dict[str, int] = {"H": 1, "B": 5, "C": 6, "N": 7, "O": 8, "F": 9, "Si": 14, "P": 15,
                                  "S": 16, "Cl": 17, "As": 33, "Br": 35, "I": 53}
SYMBOLS: dict[int, str] = {number: symbol for symbol, number in ATOMIC_NUMBERS.items()}


class UnknownElementError(ValueError):
    """An element outside the set in use; the message names the element, the file and the set."""

    def __init__(self, element: str | int, path: str | os.PathLike | None = None,
                 known: tuple[str, ...] = KNOWN_ELEMENTS, what: str = "the molecules domain"):
        self.element = element
        self.path = None if path is None else os.fspath(path)
        where = f" in {self.path}" if self.path else ""
        super().__init__(f"Unknown element {element!r}{where}: {what} knows only {', '.join(known)}.")


@cache
def allowed_valences(number: int, charge: int = 0) -> tuple[int, ...]:
    """The summed bond orders that make an atom stable.

    A neutral atom of QM9's elements takes EDM's single valence (H 1, C 4, N 3, O 2, F 1); other
    elements take RDKit's valence list (P 3/5, S 2/4/6, Cl 1, Br 1, I 1/3/5, ...). A charged atom
    takes the list of its isoelectronic neutral element, as RDKit does: N+ is like C (4), O- like
    F (1), N- like O (2), C- like N (3). An atom with no such element (H+) has none: never stable.
    """
    like = int(number) - int(charge)
    if not 1 <= like <= 118:
        return ()
    symbol = _periodic_table().GetElementSymbol(like)
    if symbol in VALENCES:
        return (VALENCES[symbol],)
    return tuple(int(v) for v in _periodic_table().GetValenceList(like) if v >= 0)


def _element_name(number: int) -> str:
    if 1 <= number <= 118:
        return _periodic_table().GetElementSymbol(number)
    return f"Z={number}"  # not an element at all


def atomic_number(symbol: str, path: str | os.PathLike | None = None) -> int:
    """Atomic number of an element symbol of ``KNOWN_ELEMENTS`` (case-insensitive), e.g. ``"cl"`` -> 17.

    Raises:
        UnknownElementError: the symbol is not one of ``KNOWN_ELEMENTS``.
    """
    number = ATOMIC_NUMBERS.get(symbol.strip().capitalize())
    if number is None:
        raise UnknownElementError(symbol, path)
    return number


def check_known(z, path: str | os.PathLike | None = None) -> np.ndarray:
    """``z`` as an int64 array ``(N,)`` after checking every element is one of ``KNOWN_ELEMENTS``.

    Raises:
        UnknownElementError: an atomic number the bond rule has no lengths for.
    """
    z = np.asarray(z, dtype=np.int64).reshape(-1)
    for number in np.unique(z):
        if int(number) not in SYMBOLS:
            raise UnknownElementError(_element_name(int(number)), path)
    return z


@dataclass(frozen=True)
class ElementSet:
    """The elements a model's one-hot spans, in column order, and whether it diffuses formal charges.

    Args:
        symbols: element symbols of ``KNOWN_ELEMENTS``, no repeats, e.g. ``("H", "C", "N", "O", "F")``.
        formal_charges: whether every atom also carries its formal charge (read from SDF) as a
            feature, so that the model generates charged atoms (N+, O-, ...).
    """

    symbols: tuple[str, ...]
    formal_charges: bool = False

    def __post_init__(self) -> None:
        symbols = tuple(self.symbols)
        object.__setattr__(self, "symbols", symbols)
        unknown = [s for s in symbols if s not in ATOMIC_NUMBERS]
        if not symbols or unknown or len(set(symbols)) != len(symbols):
            raise ValueError(f"An element set needs distinct symbols from {', '.join(KNOWN_ELEMENTS)}, "
                             f"not {list(symbols)}.")

    @classmethod
    def of(cls, symbols: list[str] | tuple[str, ...] | None, formal_charges: bool = False) -> ElementSet:
        """The set of ``symbols``, or ``QM9_ELEMENTS`` for None (checkpoints older than the option)."""
        if symbols is None:
            return QM9_ELEMENTS if not formal_charges else cls(QM9_ELEMENTS.symbols, True)
        return cls(tuple(symbols), bool(formal_charges))

    @classmethod
    def covering(cls, z_arrays, formal_charges: bool = False) -> ElementSet:
        """The smallest set holding every element of ``z_arrays`` (each ``(N,)``), by atomic number."""
        numbers = sorted({int(n) for z in z_arrays for n in np.unique(check_known(z))})
        return cls(tuple(SYMBOLS[n] for n in numbers), formal_charges)

    @property
    def atomic_numbers(self) -> np.ndarray:
        """``(K,)`` int64 atomic numbers in column order."""
        return np.array([ATOMIC_NUMBERS[s] for s in self.symbols], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.symbols)

    def type_index(self, z, path: str | os.PathLike | None = None) -> np.ndarray:
        """Column indices ``(N,)`` int64 of atomic numbers ``z`` ``(N,)``.

        Raises:
            UnknownElementError: an element outside this set (names it, the file and the set).
        """
        z = np.asarray(z, dtype=np.int64).reshape(-1)
        lookup = np.full(128, -1, dtype=np.int64)
        lookup[self.atomic_numbers] = np.arange(len(self))
        inside = (z >= 0) & (z < len(lookup))
        types = np.full(z.shape, -1, dtype=np.int64)
        types[inside] = lookup[z[inside]]
        if (types < 0).any():
            raise UnknownElementError(_element_name(int(z[types < 0][0])), path, self.symbols,
                                      "this model's element set" if self != QM9_ELEMENTS else "the molecules domain")
        return types

    def one_hot(self, z, path: str | os.PathLike | None = None) -> np.ndarray:
        """One-hot types ``(N, K)`` float32 of atomic numbers ``(N,)``."""
        return np.eye(len(self), dtype=np.float32)[self.type_index(z, path)]

    def describe(self) -> str:
        """E.g. ``"H, C, N, O, F"`` or ``"H, C, N, O, F, S, Cl, Br, I with formal charges"``."""
        return ", ".join(self.symbols) + (" with formal charges" if self.formal_charges else "")


QM9_ELEMENTS = ElementSet(("H", "C", "N", "O", "F"))
ATOM_TYPES: tuple[str, ...] = QM9_ELEMENTS.symbols


def type_index(z, path: str | os.PathLike | None = None) -> np.ndarray:
    """``QM9_ELEMENTS.type_index``: indices 0..4 (H, C, N, O, F) of atomic numbers ``(N,)``."""
    return QM9_ELEMENTS.type_index(z, path)


def one_hot(z, path: str | os.PathLike | None = None) -> np.ndarray:
    """``QM9_ELEMENTS.one_hot``: ``(N, 5)`` float32 over H, C, N, O, F."""
    return QM9_ELEMENTS.one_hot(z, path)
