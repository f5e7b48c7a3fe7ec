"""What a molecules run left behind, found from any one of its files.

``sample molecules --out X.sdf`` writes ``X.sdf``, the candidates table ``X.csv`` and the summary
``X.sdf.json``; ``evaluate molecules --out M.json`` writes the EDM metrics of a samples file, which it names.
Any of ``X.sdf`` (or ``.xyz``, from any tool), ``X.sdf.json`` or ``M.json`` leads to the rest.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from sci_diffusion.errors import UserError
from sci_diffusion.report.run_files import find_recorded_path, read_small_json, require_json

from ..chem.files import MOLECULE_SUFFIXES


@dataclass
class MoleculeRun:
    """The files of one molecules run.

    Attributes:
        samples: the molecules (.sdf or .xyz).
        candidates: ``sample molecules``' table beside it (``<stem>.csv``) as rows of strings, or None.
        candidate_columns: that table's columns, in its order.
        summary: ``sample molecules``' summary (``<samples>.json``), or None.
        metrics: ``evaluate molecules``' metrics of the samples, or None.
    """

    samples: Path
    candidates: list[dict[str, str]] | None = None
    candidate_columns: list[str] | None = None
    summary: dict | None = None
    metrics: dict | None = None


def _is_molecules_json(value: dict | None) -> bool:
    """A summary of ``sample molecules`` or the metrics of ``evaluate molecules``: both name a samples file."""
    return bool(value) and str(value.get("samples", "")).lower().endswith(MOLECULE_SUFFIXES)


def recognises(path: Path) -> bool:
    """Whether ``path`` is a molecules run output: an .sdf/.xyz file, or a JSON file that names one."""
    if path.is_file() and path.suffix.lower() in MOLECULE_SUFFIXES:
        return True
    return path.suffix.lower() == ".json" and _is_molecules_json(read_small_json(path))


def locate_run(path: Path) -> MoleculeRun:
    """The run whose output ``path`` is (see the module docstring).

    Raises:
        UserError: a JSON file that names no samples file, or names one that is nowhere to be found.
    """
    metrics = summary = None
    if path.suffix.lower() == ".json":
        record = require_json(path)
        if not _is_molecules_json(record):
            raise UserError(f"{path} names no samples file (.sdf or .xyz): it is not the output of sample or evaluate "
                            "molecules.")
        samples = find_recorded_path(record["samples"], path.parent)
        if samples is None:
            raise UserError(f"{path} names the samples file {record['samples']}, which is not there (nor beside {path}).")
        metrics, summary = (record, None) if "atom_stability" in record else (None, record)
    else:
        samples = path
    summary = summary or read_small_json(samples.with_name(samples.name + ".json"))
    run = MoleculeRun(samples, summary=summary, metrics=metrics)
    table = samples.with_suffix(".csv")
    if table.is_file():
        with table.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            run.candidates = list(reader)
            run.candidate_columns = list(reader.fieldnames or [])
    return run
