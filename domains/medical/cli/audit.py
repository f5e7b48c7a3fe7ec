"""``sci-diffusion audit medical``: the memorisation audit of a synthetic data set (``evaluation.audit``)."""
from __future__ import annotations

import argparse

from sci_diffusion.atomic import check_writable

from ..evaluation.audit import NEAR_COPY_CORRELATION, audit_directories


def run_audit(args: argparse.Namespace) -> int:
    check_writable(args.out, "--out")
    if args.png is not None:
        check_writable(args.png, "--png")
    threshold = NEAR_COPY_CORRELATION if args.threshold is None else args.threshold
    report = audit_directories(args.synthetic, args.train, args.out, png=args.png, modality=args.modality,
                               threshold=threshold)
    c, ref = report["correlation"], report["training_reference"]
    print(f"{report['n_synthetic']} synthetic against {report['n_training']} training subjects ({args.modality}): nearest "
          f"correlation median {c['median']:.3f}, max {c['max']:.3f}; {len(report['near_copies'])} near copies "
          f"(r >= {threshold:g})" + ("" if ref is None else f"; between training subjects the nearest-other correlation "
                                     f"reaches {ref['max']:.3f}") + f" -> {args.out}")
    return 0
