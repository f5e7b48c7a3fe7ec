"""``sci-diffusion synthesize medical``: a SYNTHETIC paired MR / CT / label data set (``synthetic.dataset``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from sci_diffusion.errors import UserError
from sci_diffusion.report.command import check_report_path
from sci_diffusion.shards import parse_shard

from ..report.page import write_dataset_report
from ..synthetic.dataset import list_label_maps, write_synthetic_dataset
from .arguments import SYNTHESIS_MODELS, chosen_checkpoint


def run_synthesize(args: argparse.Namespace) -> int:
    check_report_path(args.report)  # refused before any subject is drawn
    label_maps = list_label_maps(args.labels) if args.labels else None
    num = args.num
    if num is None:
        if label_maps is None:
            raise UserError("Say how many subjects to write with --num (or give your own label maps with --labels DIR).")
        num = len(label_maps)
    if label_maps is not None and num > len(label_maps):
        raise UserError(f"--num {num} asks for more subjects than the {len(label_maps)} label maps in {args.labels}.")
    shard = parse_shard(args.shard, num, "subjects") if num >= 1 else None
    ckpt = chosen_checkpoint(args, SYNTHESIS_MODELS)
    info = write_synthetic_dataset(args.out, num, ckpt=ckpt, seed=args.seed, steps=args.steps,
                                   fmt=args.format, png=args.png, sampler=args.sampler, spacing_mm=args.spacing,
                                   shard=shard, label_maps=label_maps[:num] if label_maps else None,
                                   guidance=args.guidance)
    extra = f"; nnU-Net layout in {info['nnunet']}" if "nnunet" in info else ""
    print(f"Wrote {info['subjects']} SYNTHETIC subjects at {'x'.join(f'{v:g}' for v in info['spacing_mm'])} mm to "
          f"{info['out']} ({info['seconds_per_subject']:.1f} s per subject, peak RSS {info['peak_rss_mb']:.0f} MB); "
          f"contact sheet {info['png']}{extra}.")
    if args.report:
        print(write_dataset_report(Path(args.out), Path(args.report)))
    return 0
