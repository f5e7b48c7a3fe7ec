"""``sci-diffusion evaluate mri2ct``: score synthetic CTs against reference CTs (``evaluation.directory``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from sci_diffusion.atomic import check_writable
from sci_diffusion.report.command import check_report_path

from ..evaluation.directory import evaluate_directory
from ..report.page import write_evaluation_report


def run_evaluate(args: argparse.Namespace) -> int:
    if args.png is not None:
        check_writable(args.png, "--png")
    check_report_path(args.report)
    report = evaluate_directory(args.pred, args.ref, args.out, allow_missing=args.allow_missing, reliability_png=args.png)
    mean = report["mean"]
    print(f"{report['n_patients']} patients: MAE {mean['mae']:.1f} HU, PSNR {mean['psnr']:.2f} dB, "
          f"SSIM {mean['ssim']:.4f}, bone MAE {mean.get('tissue_mae.bone', float('nan')):.1f} HU -> {args.out}")
    if "coverage_1sigma" in mean:
        print(f"uncertainty: std-|error| r {mean['uncertainty_error_r']:.3f}, within 1σ {100 * mean['coverage_1sigma']:.1f} %, "
              f"within 2σ {100 * mean['coverage_2sigma']:.1f} % (calibrated: 68.3 %, 95.4 %)"
              + (f"; reliability diagram {report['reliability_png']}" if "reliability_png" in report else ""))
    if args.report:
        print(write_evaluation_report(Path(args.out), Path(args.report)))
    return 0
