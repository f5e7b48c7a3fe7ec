"""``sci-diffusion phantom``: write paired SYNTHETIC head phantoms in the SynthRAD2023 layout."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sci_diffusion.atomic import check_writable

from ..data.phantom import write_phantom_dataset
from ..data.phantom_v2 import write_phantom_dataset_v2
from ..io.nifti import MedicalInputError


def run_phantom(args: argparse.Namespace) -> int:
    if args.subjects < 1:
        raise MedicalInputError(f"--subjects must be at least 1, got {args.subjects}.")
    if args.spacing <= 0:
        raise MedicalInputError(f"--spacing must be positive, got {args.spacing}.")
    if args.version == 1 and args.contrast is not None:
        raise MedicalInputError("--contrast picks a contrast family of --version 2; version 1 has --scanner.")
    if args.version == 2 and args.scanner != "default":
        raise MedicalInputError("--scanner is version 1's; version 2 draws every subject's scanner from --contrast t1, t2 or pd.")
    check_writable(Path(args.out) / "dataset.json", "--out")
    imaging = f"{args.scanner} scanner" if args.version == 1 else f"version 2, {args.contrast or 't1'} contrasts"
    print(f"Writing {args.subjects} SYNTHETIC head phantoms ({imaging}) at {args.spacing:g} mm to {args.out} ...",
          file=sys.stderr)
    if args.version == 1:
        pairs = write_phantom_dataset(args.out, args.subjects, args.spacing, args.seed, args.scanner)
    else:
        pairs = write_phantom_dataset_v2(args.out, args.subjects, args.spacing, args.seed, args.contrast or "t1")
    print(f"Wrote {len(pairs)} subjects ({pairs[0]['id']} .. {pairs[-1]['id']}) and {args.out}/dataset.json.")
    return 0
