"""Property conditioning: the properties a model is conditioned on, their normalisation, and targets.

A conditional model sees its targets normalised with the mean and the mean absolute deviation
(MAD) of its training set (Db in the conditional QM9 protocol, docs/protocols.md §1), appended to
every atom's features with one presence flag per property: ``cond = [(y_1 - mean_1) / mad_1, ...,
(y_P - mean_P) / mad_P, 1, ..., 1]`` (``2P`` columns; for one property EDM's ``[y, 1]``). An absent
property (not asked for, or dropped in training) has its value and its flag at zero, so a
six-property model samples with any subset of targets; the null condition of classifier-free
guidance is all zeros.

:class:`PropertyConditioning` holds what a checkpoint needs to sample with a condition: the
names, the normalisation, and the training set's joint table of atom counts and property values,
from which the protocol draws its targets (``--condition-from db``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sci_diffusion.errors import UserError

from .qm9 import PROPERTY_NAMES, PROPERTY_UNITS

DRAW_PARTS = ("all", "selection", "protocol")
SELECTION_FRACTION = 0.1  # of the training molecules: the targets guidance settings are chosen on


def check_property_names(names: Sequence[str]) -> list[str]:
    """The names as a list; UserError for a name that is not a QM9 property or appears twice."""
    names = list(names)
    for name in names:
        if name not in PROPERTY_NAMES:
            raise UserError(f"Unknown property {name!r}; the QM9 properties are {', '.join(PROPERTY_NAMES)}.")
    if len(set(names)) != len(names):
        raise UserError(f"A property is named twice in {', '.join(names)}.")
    return names


@dataclass
class PropertyConditioning:
    """Normalisation and target table of a conditional model.

    Attributes:
        names: conditioned properties, in the order the network sees them (P of them).
        mean, mad: ``(P,)`` float64 mean and mean absolute deviation of the training set, in
            ``PROPERTY_UNITS`` (eV for energies).
        num_atoms: ``(M,)`` int64 atom counts of the training molecules.
        values: ``(M, P)`` float64 their property values, row-aligned with ``num_atoms``.
    """

    names: list[str]
    mean: np.ndarray
    mad: np.ndarray
    num_atoms: np.ndarray
    values: np.ndarray

    @classmethod
    def from_training_set(cls, names: Sequence[str], num_atoms: np.ndarray, properties: np.ndarray,
                          mean: Sequence[float] | None = None, mad: Sequence[float] | None = None) -> PropertyConditioning:
        """Build it from the training set.

        Args:
            names: properties to condition on.
            num_atoms: ``(M,)`` atom counts.
            properties: ``(M, 6)`` all QM9 properties in ``PROPERTY_NAMES`` order.
            mean, mad: override the training set's statistics (one value per name).
        """
        names = check_property_names(names)
        cols = [PROPERTY_NAMES.index(n) for n in names]
        values = np.asarray(properties, dtype=np.float64)[:, cols]
        if not np.isfinite(values).all():
            raise ValueError("The training set has a property value that is not finite.")
        data_mean = values.mean(0)
        data_mad = np.abs(values - data_mean).mean(0)
        return cls(names, np.asarray(mean if mean is not None else data_mean, dtype=np.float64),
                   np.asarray(mad if mad is not None else data_mad, dtype=np.float64),
                   np.asarray(num_atoms, dtype=np.int64), values)

    @property
    def units(self) -> list[str]:
        return [PROPERTY_UNITS[n] for n in self.names]

    @property
    def low(self) -> np.ndarray:
        """``(P,)`` smallest training value of each property."""
        return self.values.min(0)

    @property
    def high(self) -> np.ndarray:
        """``(P,)`` largest training value of each property."""
        return self.values.max(0)

    def normalise(self, values: Tensor) -> Tensor:
        """``(G, P)`` values in property units -> ``(G, P)`` normalised targets."""
        mean = torch.as_tensor(self.mean, dtype=values.dtype, device=values.device)
        mad = torch.as_tensor(self.mad, dtype=values.dtype, device=values.device)
        return (values - mean) / mad

    def denormalise(self, normalised: Tensor) -> Tensor:
        """Inverse of :meth:`normalise`."""
        mean = torch.as_tensor(self.mean, dtype=normalised.dtype, device=normalised.device)
        mad = torch.as_tensor(self.mad, dtype=normalised.dtype, device=normalised.device)
        return normalised * mad + mean

    def condition(self, values: Tensor) -> Tensor:
        """The network's condition ``(G, 2P)`` for ``(G, P)`` targets in property units, NaN where a property
        is not asked for: the normalised values (0 where absent), then the presence flags (1 or 0)."""
        present = torch.isfinite(values)
        c = torch.where(present, self.normalise(values), torch.zeros_like(values))
        return torch.cat([c, present.to(c.dtype)], dim=1)

    def targets_of(self, cond: Tensor) -> Tensor:
        """Inverse of :meth:`condition`: ``(G, 2P)`` -> ``(G, P)`` targets in property units, NaN where absent."""
        p = len(self.names)
        values = self.denormalise(cond[:, :p])
        return torch.where(cond[:, p:] > 0.5, values, torch.full_like(values, float("nan")))

    def draw_joint(self, num: int, generator: torch.Generator, part: str = "all") -> tuple[list[int], Tensor]:
        """The protocol's draw: ``num`` training molecules at random (with replacement), their atom
        counts and their property values, so that size and target come jointly from the training set.

        EDM draws the atom count from its histogram and the value from a 1,000-bin histogram per
        atom count; drawing whole rows samples the same joint distribution without the binning.

        Args:
            part: which training molecules to draw from (``part_rows``): ``all``, or the disjoint
                ``selection`` (where a benchmark chooses its guidance settings) and ``protocol`` (where
                it then measures the chosen ones once).

        Returns:
            ``(counts, values)``: ``num`` atom counts and ``(num, P)`` float64 values.
        """
        rows = self.part_rows(part)
        rows = rows[torch.randint(len(rows), (num,), generator=generator).numpy()]
        return self.num_atoms[rows].tolist(), torch.from_numpy(self.values[rows])

    def part_rows(self, part: str) -> np.ndarray:
        """Indices of the training molecules in ``part``: ``all`` of them, or, split once by a fixed
        permutation (``RandomState(7)``), a ``selection`` part of ``SELECTION_FRACTION`` of them and the
        ``protocol`` part of the others; both sorted.

        Raises:
            ValueError: another part name.
        """
        if part not in DRAW_PARTS:
            raise ValueError(f"part must be one of {', '.join(DRAW_PARTS)}, not {part!r}.")
        if part == "all":
            return np.arange(len(self.num_atoms))
        order = np.random.RandomState(7).permutation(len(self.num_atoms))
        cut = int(round(SELECTION_FRACTION * len(order)))
        return np.sort(order[:cut] if part == "selection" else order[cut:])

    def targets_from_mapping(self, targets: dict[str, float]) -> np.ndarray:
        """``(P,)`` values in this model's order from ``{name: value}``, NaN for a property not asked for
        (the model then samples it as the training set has it); UserError for a property this model was
        not trained on, or for no target at all."""
        for name in targets:
            if name not in self.names:
                raise UserError(f"This model is conditioned on {', '.join(self.names)}, not on {name!r}.")
        if not targets:
            raise UserError(f"This model is conditioned on {', '.join(self.names)}: give a target for at least "
                            f"one (e.g. --condition {self.names[0]}=...), or use --condition-from db.")
        return np.array([targets.get(n, np.nan) for n in self.names], dtype=np.float64)

    def outside_training_range(self, values: np.ndarray) -> list[str]:
        """Descriptions of the targets in ``(P,)`` (NaN: not asked for) that lie outside the training set's range."""
        low, high = self.low, self.high
        return [f"{n}={v:g} {u} lies outside the training range [{lo:.3g}, {hi:.3g}] {u}"
                for n, u, v, lo, hi in zip(self.names, self.units, values, low, high)
                if np.isfinite(v) and not lo <= v <= hi]

    def to_record(self) -> dict:
        """A checkpoint-friendly dict (compact arrays as tensors)."""
        return {"names": list(self.names), "units": self.units, "mean": self.mean.tolist(), "mad": self.mad.tolist(),
                "num_atoms": torch.from_numpy(self.num_atoms.astype(np.int16)),
                "values": torch.from_numpy(self.values.astype(np.float32))}

    @classmethod
    def from_record(cls, record: dict) -> PropertyConditioning:
        return cls(list(record["names"]), np.asarray(record["mean"], dtype=np.float64),
                   np.asarray(record["mad"], dtype=np.float64), record["num_atoms"].numpy().astype(np.int64),
                   record["values"].numpy().astype(np.float64))


def parse_targets(items: Sequence[str]) -> dict[str, float]:
    """``["gap=6.5", "homo=-6.1"]`` -> ``{"gap": 6.5, "homo": -6.1}``; one item may hold several,
    separated by commas. UserError for an unknown property, a repeated one, or a value that is not
    a finite number."""
    targets: dict[str, float] = {}
    for item in (part for entry in items for part in entry.split(",") if part.strip()):
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep:
            raise UserError(f"--condition {item!r} should read NAME=VALUE, e.g. gap=6.5.")
        check_property_names([name])
        try:
            value = float(text)
        except ValueError:
            raise UserError(f"--condition {name}={text!r}: the target is not a number.") from None
        if not math.isfinite(value):
            raise UserError(f"--condition {name}={text}: the target must be a finite number.")
        if name in targets:
            raise UserError(f"--condition names {name!r} twice.")
        targets[name] = value
    return targets
