"""``sci-diffusion evaluate molecules``: score an SDF/XYZ file with the EDM metrics (flags: ``arguments.py``)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sci_diffusion.checkpoints import bundled_checkpoint, file_sha256, load_module
from sci_diffusion.errors import UserError
from sci_diffusion.report.command import check_report_path

from ..chem.files import read_molecules
from ..data.qm9 import train_smiles
from ..evaluation.evaluate_file import evaluate_file
from ..evaluation.geometry import XtbUnavailableError, tblite_calculator_class
from ..evaluation.metrics import novelty_reference
from ..models.property_model import load_property_model
from ..report.page import write_report

# what the terminal shows of --xtb's geometry check (the JSON holds all of it)
XTB_HEADLINE = ("subsample", "median_drop_kcal_per_mol", "p90_drop_kcal_per_mol", "scored", "unscorable_fraction",
                "unscorable", "seconds_per_molecule")


def run_evaluate(args: argparse.Namespace) -> int:
    """``evaluate molecules``: the EDM metrics of ``--samples`` (and the classifier's MAE against their
    targets) as ``--out`` JSON; prints the headline metrics (with ``--xtb``, the geometry check's too)."""
    _check_xtb_flags(args)
    check_report_path(args.report)
    for path in args.samples:
        if not Path(path).is_file():
            raise UserError(f"Samples file {path} does not exist.")
    if len(args.samples) > 1 and args.report:
        raise UserError("--report draws the page of one samples file; give one --samples file, or leave --report out.")
    try:
        first = read_molecules(args.samples[0])[:1]
    except ValueError as exc:
        raise UserError(str(exc)) from None
    classifier = None
    if args.classifier:
        classifier = load_property_model(args.classifier, "property_classifier")
    else:
        if first and "target_gap" in first[0][2]:
            path = bundled_checkpoint("sci_diffusion_molecules", "classifier", "--classifier")
            classifier = load_property_model(path, "property_classifier")
    reference, described = None, None
    if args.novelty:
        ckpt = args.ckpt or _generating_checkpoint(first[0][2] if first else {})
        module = load_module(ckpt, domain="molecules") if ckpt else None
        reference = novelty_reference(module) if module is not None else train_smiles()
        described = (f"the training set of {ckpt} ({len(reference)} SMILES)"
                     if module is not None and module.training_smiles is not None else "QM9's EDM train split")
    try:
        metrics = evaluate_file(args.samples, args.out, reference, classifier, novelty_reference=described,
                                xtb=args.xtb, xtb_max=args.xtb_max, progress=sys.stderr.isatty())
    except ValueError as exc:  # MoleculeFileError, UnknownElementError: already one clear sentence
        raise UserError(str(exc)) from None
    keys = ("atom_stability", "molecule_stability", "validity", "uniqueness", "validity_x_uniqueness", "novelty",
            "property_mae")
    headline = {k: metrics[k] for k in keys if k in metrics}
    if "xtb_geometry" in metrics:
        headline["xtb_geometry"] = {k: metrics["xtb_geometry"][k] for k in XTB_HEADLINE}
    print(json.dumps(headline, indent=2))
    if args.report:  # on stderr: stdout stays the JSON above
        print(write_report(Path(args.out), Path(args.report)), file=sys.stderr)
    return 0


def _check_xtb_flags(args: argparse.Namespace) -> None:
    """``--xtb-max`` only with ``--xtb`` and above 0; ``--xtb`` only where tblite is installed (before any work)."""
    if args.xtb_max is not None and not args.xtb:
        raise UserError("--xtb-max N needs --xtb (it limits the geometry check to the first N molecules).")
    if args.xtb_max is not None and args.xtb_max < 1:
        raise UserError(f"--xtb-max must be at least 1, not {args.xtb_max}.")
    if args.xtb:
        try:
            tblite_calculator_class()
        except XtbUnavailableError as exc:
            raise UserError(str(exc)) from None


def _generating_checkpoint(properties: dict) -> str | None:
    """The checkpoint a record of ``sample molecules`` names (``checkpoint``), if that file still holds the
    model of the record's ``checkpoint_sha256``; None otherwise."""
    path = properties.get("checkpoint")
    if not path or not Path(path).is_file():
        return None
    return path if file_sha256(path) == properties.get("checkpoint_sha256") else None
