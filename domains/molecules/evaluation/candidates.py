"""The candidates table of a sampling run: one row per molecule, with its EDM verdicts, its RDKit
descriptors (``triage.descriptors``), its target and the evaluation classifier's prediction, written
as ``candidates.csv``.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from sci_diffusion.atomic import atomic_path

from ..chem.stability import molecule_report
from ..data.qm9 import PROPERTY_UNITS
from .triage import DESCRIPTOR_COLUMNS, descriptors

BASE_COLUMNS = ("index", "smiles", "stable", "valid", "novel", "failed", *DESCRIPTOR_COLUMNS)
PREVIEW_HIDDEN = ("rings", "aromatic_rings", "charged_atoms", "net_charge")  # in the CSV, not the printed preview


@dataclass
class CandidateTable:
    """Rows of ``index, smiles, stable, valid, novel, failed, qed, sa, rings, aromatic_rings,
    charged_atoms, net_charge, target_<p> [unit], predicted_<p> [unit]`` and any ``extra_columns``.

    The descriptors (``triage.descriptors``) are those of the SMILES, empty for an invalid molecule.
    A sample whose coordinates are not finite (the sampler diverged) keeps its row, marked failed,
    unstable and invalid, so that it counts in every fraction's denominator.

    Args:
        properties: the conditioned (or predicted) properties; empty for a plain run.
        train_smiles: the novelty reference (None: the novel column is left empty).
        extra_columns: columns the caller fills in itself, e.g. ``passes_filter``, written last.
    """

    properties: Sequence[str] = ()
    train_smiles: frozenset[str] | None = None
    rows: list[dict] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)

    def add(self, index: int, z: np.ndarray, pos: np.ndarray, target: Sequence[float] | None = None,
            prediction: Sequence[float] | None = None, charges: np.ndarray | None = None) -> dict:
        """Score one molecule (with its formal charges, if any) and append its row; returns the row."""
        failed = not np.isfinite(pos).all()
        stable, smiles = (np.zeros(1, bool), None) if failed else molecule_report(z, pos, charges)
        row = {"index": index, "smiles": smiles or "", "stable": int(stable.all()), "valid": int(smiles is not None),
               "novel": "" if self.train_smiles is None or smiles is None else int(smiles not in self.train_smiles),
               "failed": int(failed), **descriptors(smiles)}
        for k, name in enumerate(self.properties):
            row[self._column("target", name)] = _number(None if target is None else target[k])
            row[self._column("predicted", name)] = _number(None if prediction is None else prediction[k])
        self.rows.append(row)
        return row

    @staticmethod
    def _column(kind: str, name: str) -> str:
        return f"{kind}_{name} [{PROPERTY_UNITS[name]}]"

    @property
    def columns(self) -> list[str]:
        return [*BASE_COLUMNS, *(self._column(kind, n) for n in self.properties for kind in ("target", "predicted")),
                *self.extra_columns]

    def mean_absolute_error(self) -> dict[str, float]:
        """``{property: MAE}`` between prediction and target over the rows that have both (property units)."""
        out = {}
        for name in self.properties:
            pairs = [(float(r[self._column("target", name)]), float(r[self._column("predicted", name)]))
                     for r in self.rows if r[self._column("target", name)] != "" and r[self._column("predicted", name)] != ""]
            if pairs:
                out[name] = float(np.mean([abs(p - t) for t, p in pairs]))
        return out

    def write_csv(self, path: str | os.PathLike, rows: Sequence[dict] | None = None,
                  extra_columns: Sequence[str] = ()) -> None:
        """All rows (or ``rows``, in their order) as CSV, written atomically; ``extra_columns`` go last."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[*self.columns, *extra_columns], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows if rows is None else rows)
        with atomic_path(path, suffix=".csv") as tmp:
            tmp.write_text(buffer.getvalue())

    def preview(self, rows: int = 10, indices: Collection[int] | None = None) -> str:
        """The first ``rows`` rows (of those whose index is in ``indices``, when given) as an aligned text table
        (what the CLI prints)."""
        shown: Iterable[dict] = [r for r in self.rows if indices is None or r["index"] in indices][:rows]
        columns = [c for c in self.columns if c not in PREVIEW_HIDDEN]
        cells = [columns] + [[str(r.get(c, "")) for c in columns] for r in shown]
        widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _number(value: float | None) -> str:
    """A table cell: the value to 6 significant digits, or empty when unknown."""
    return "" if value is None or not np.isfinite(value) else f"{value:.6g}"
