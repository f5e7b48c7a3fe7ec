"""``evaluate_file``: the EDM metrics of a samples file, written to JSON (``sci-diffusion evaluate molecules``)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from sci_diffusion.atomic import write_json

from ..chem.files import MoleculeFileError, read_generated_bonds, read_molecules
from ..models.property_model import predict_properties
from .conditional_protocol import mean_absolute_error
from .geometry import relaxation_summary
from .metrics import evaluate_generated_bonds, evaluate_molecules


def sample_paths(samples_path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str | os.PathLike]:
    """One samples file, or the parts of one run, as a list of paths."""
    return [samples_path] if isinstance(samples_path, (str, os.PathLike)) else list(samples_path)


def read_samples(samples_path: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[list[tuple], list | None]:
    """The molecules of one samples file, or of the parts of one run (``sample molecules --shard``) in order, and
    their generated bonds where every file carries them (None otherwise).

    Raises:
        MoleculeFileError: a file missing, malformed or empty, or two parts that hold the same run index (one part
            given twice, or parts of different runs).
    """
    paths = sample_paths(samples_path)
    molecules, bonds, seen = [], [], {}
    for path in paths:
        part = read_molecules(path, with_charges=True)
        if not part:
            raise MoleculeFileError(f"{path} holds no molecules.")
        for _, _, props, _ in part:
            index = props.get("index")
            if index is not None and len(paths) > 1:
                if index in seen:
                    raise MoleculeFileError(f"{path} and {seen[index]} both hold molecule {index} of a run: give each "
                                            "part once, and parts of one run only.")
                seen[index] = path
        molecules += part
        generated = read_generated_bonds(path)
        bonds = None if bonds is None or generated is None else bonds + generated
    return molecules, bonds


def evaluate_file(
    samples_path: str | os.PathLike | Sequence[str | os.PathLike],
    out_json: str | os.PathLike,
    train_smiles: Iterable[str] | None = None,
    classifier=None,
    novelty_reference: str | None = None,
    xtb: bool = False,
    xtb_max: int | None = None,
    progress: bool = False,
) -> dict:
    """Evaluate every molecule of an SDF/XYZ file with the EDM metrics and write them as JSON.

    Bonds in the file are ignored; they are re-derived from the coordinates. An SDF's formal
    charges count (an N+ with four bonds is stable). A bond-aware model's samples (records marked
    ``bond_source=generated``) are also scored on their own bonds, under MiDi's metric, as ``generated_bonds``.

    Args:
        samples_path: a ``.sdf`` or ``.xyz`` file of generated molecules.
        out_json: where to write the metrics (atomically).
        train_smiles: the novelty reference, e.g. ``qm9.train_smiles()``; None reports
            novelty as null.
        classifier: a property classifier (``property_model.PropertyPredictor``); with it, the
            molecules whose records carry ``target_<property>`` (as ``sample molecules --condition``
            writes them) are scored: ``property_mae`` ``{property: MAE}`` in property units, over
            ``property_scored`` molecules.
        novelty_reference: what ``train_smiles`` are, recorded in the JSON (e.g. "QM9's EDM train split").
        xtb: add the GFN2-xTB geometry check (``geometry.relaxation_summary``) as ``xtb_geometry``; needs tblite.
        xtb_max: with ``xtb``, relax only the file's first this many molecules (None: all); ``xtb_geometry``
            then says so in ``subsample``.
        progress: show a progress bar for the xTB relaxations (stderr).

    Returns:
        The metrics of ``metrics.evaluate_molecules`` plus ``samples`` (the path) and
        ``sample_properties`` (the SD/comment properties that all molecules share,
        e.g. the sampler and its settings), and with ``xtb`` the geometry check as ``xtb_geometry``.

    Raises:
        MoleculeFileError: missing, not SDF/XYZ, malformed or empty (a ValueError).
        UnknownElementError: an element without EDM bond lengths (a ValueError).
        XtbUnavailableError: ``xtb`` without tblite installed (an ImportError).
    """
    molecules, generated = read_samples(samples_path)
    results = evaluate_molecules(((z, pos, charges) for z, pos, _, charges in molecules), train_smiles)
    if generated is not None:  # a bond-aware model's samples: MiDi's metric on the bonds they carry, beside EDM's
        results["generated_bonds"] = evaluate_generated_bonds((z, b, q) for (z, _, _, q), b in zip(molecules, generated))
    shared = dict(molecules[0][2])
    for _, _, props, _ in molecules[1:]:
        shared = {k: v for k, v in shared.items() if props.get(k) == v}
    paths = sample_paths(samples_path)
    results = {"samples": str(Path(paths[0])) if len(paths) == 1 else [str(Path(p)) for p in paths], **results,
               "novelty_reference": novelty_reference,
               "sample_properties": shared}
    if classifier is not None:
        results.update(_property_errors(molecules, classifier))
    if xtb:
        results["xtb_geometry"] = _geometry_check(molecules, xtb_max, progress)
    write_json(out_json, results)
    return results


def _geometry_check(molecules: list, xtb_max: int | None, progress: bool) -> dict:
    """``relaxation_summary`` of the file's molecules (the first ``xtb_max``), saying which were relaxed."""
    summary = relaxation_summary(molecules, xtb_max, progress)
    subsample = (f"the first {summary['molecules']} of {len(molecules)} molecules"
                 if summary["molecules"] < len(molecules) else f"all {len(molecules)} molecules")
    return {"subsample": subsample, **summary}


def _property_errors(molecules: list, classifier) -> dict:
    """MAE of the classifier's predictions against the records' ``target_<property>`` fields."""
    predictions = predict_properties(classifier, ((z, pos) for z, pos, *_ in molecules))
    out: dict = {"property_mae": {}, "property_scored": {}, "classifier_sha256": classifier.checkpoint_hash}
    for k, name in enumerate(classifier.properties):
        rows = [i for i, (_, _, props, _) in enumerate(molecules) if f"target_{name}" in props]
        if not rows:
            continue
        try:
            targets = np.array([[float(molecules[i][2][f"target_{name}"])] for i in rows])
        except ValueError:
            raise MoleculeFileError(f"A target_{name} field is not a number.") from None
        mae, scored = mean_absolute_error(predictions[rows][:, [k]], targets)
        out["property_mae"][name], out["property_scored"][name] = float(mae[0]), scored
    return out
