"""``sci-diffusion phantom``: write paired SYNTHETIC head phantoms in the SynthRAD2023 layout."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sci_diffusion.atomic import check_writable

from ..data.phantom import write_phantom_dataset
from ..io.nifti import MedicalInputError


def run_phantom(args: argparse.Namespace) -> int:
    if args.subjects < 1:
        raise MedicalInputError(f"--subjects must be at least 1, got {args.subjects}.")
    if args.spacing <= 0:
        raise MedicalInputError(f"--spacing must be positive, got {args.spacing}.")
    check_writable(Path(args.out) / "dataset.json", "--out")
    print(f"Writing {args.subjects} SYNTHETIC head phantoms ({args.scanner} scanner) at {args.spacing:g} mm to "
          f"{args.out} ...", file=sys.stderr)
    pairs = write_phantom_dataset(args.out, args.subjects, args.spacing, args.seed, args.scanner)
    print(f"Wrote {len(pairs)} subjects ({pairs[0]['id']} .. {pairs[-1]['id']}) and {args.out}/dataset.json.")
    return 0
