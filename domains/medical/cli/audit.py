"""``sci-diffusion audit medical``: the memorisation audit of a synthetic data set (``evaluation.audit``)."""
from __future__ import annotations

import argparse

from sci_diffusion.atomic import check_writable

from ..evaluation.audit import AuditSettings, audit_directories


def run_audit(args: argparse.Namespace) -> int:
    check_writable(args.out, "--out")
    if args.png is not None:
        check_writable(args.png, "--png")
    settings = AuditSettings(spacing_mm=args.spacing_mm, box_mm=args.box_mm, percentile=args.percentile)
    report = audit_directories(args.synthetic, args.train, args.out, png=args.png, held_out_dir=args.held_out,
                               settings=settings)
    f, p = report["flagged"], args.percentile
    first = next(iter(report["synthetic"].items()))
    print(f"{report['n_synthetic']} synthetic against {report['n_training']} training subjects, reference "
          f"{report['n_reference']} {report['reference']} subjects: {len(f['subjects'])} subjects flagged "
          f"({100 * f['fraction']:.0f} %) and {f['slices']} of {f['n_slices']} slices ({100 * f['slice_fraction']:.0f} %), "
          f"against {p:g} % expected without memorisation; most extreme {first[0]} (nearest {first[1]['nearest_training']}, "
          f"CT distance {first[1]['distance']['ct']:.3f}) -> {args.out}")
    return 0
