"""``sci-diffusion synthesize medical``: a SYNTHETIC paired MR / CT / label data set (``synthetic.dataset``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from sci_diffusion.report.command import check_report_path
from sci_diffusion.shards import parse_shard

from ..report.page import write_dataset_report
from ..synthetic.dataset import write_synthetic_dataset


def run_synthesize(args: argparse.Namespace) -> int:
    check_report_path(args.report)  # refused before any subject is drawn
    shard = parse_shard(args.shard, args.num, "subjects") if args.num >= 1 else None
    info = write_synthetic_dataset(args.out, args.num, ckpt=args.ckpt, seed=args.seed, steps=args.steps,
                                   fmt=args.format, png=args.png, sampler=args.sampler, spacing_mm=args.spacing,
                                   shard=shard)
    extra = f"; nnU-Net layout in {info['nnunet']}" if "nnunet" in info else ""
    print(f"Wrote {info['subjects']} SYNTHETIC subjects at {'x'.join(f'{v:g}' for v in info['spacing_mm'])} mm to "
          f"{info['out']} ({info['seconds_per_subject']:.1f} s per subject, peak RSS {info['peak_rss_mb']:.0f} MB); "
          f"contact sheet {info['png']}{extra}.")
    if args.report:
        print(write_dataset_report(Path(args.out), Path(args.report)))
    return 0
