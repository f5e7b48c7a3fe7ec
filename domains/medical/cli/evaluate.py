"""``sci-diffusion evaluate mri2ct``: score synthetic CTs against reference CTs (``evaluation.directory``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from sci_diffusion.atomic import check_writable
from sci_diffusion.errors import UserError
from sci_diffusion.report.command import check_report_path

from ..evaluation.directory import evaluate_directory
from ..report.page import write_evaluation_report


def uncertainty_lines(report: dict) -> list[str]:
    """What the report says of the uncertainty, each against what a calibrated sampler shows with the K the
    predictions were made with (``ensemble.calibrated_reference``; K from the sidecars, else the large-K limit)."""
    mean, lines = report["mean"], []
    ref = report.get("calibrated_reference")
    k = f"K = {ref['samples']}" if ref else "K unknown (no sidecar), large-K limit"
    one, two = (ref["coverage_1sigma"], ref["coverage_2sigma"]) if ref else (0.6827, 0.9545)
    if "coverage_1sigma" in mean:
        lines.append(f"uncertainty: std-|error| r {mean['uncertainty_error_r']:.3f}, within 1σ "
                     f"{100 * mean['coverage_1sigma']:.1f} %, within 2σ {100 * mean['coverage_2sigma']:.1f} % "
                     f"(calibrated for {k}: {100 * one:.1f} %, {100 * two:.1f} %)"
                     + (f"; reliability diagram {report['reliability_png']}" if "reliability_png" in report else ""))
    if "samples.minmax_coverage" in mean:
        lines.append(f"samples: [min, max] covers {100 * mean['samples.minmax_coverage']:.1f} % (calibrated "
                     f"{100 * mean['samples.minmax_expected']:.1f} %), rank histogram chi2 "
                     f"{mean['samples.rank_histogram.chi2']:.0f} on {mean['samples.rank_histogram.samples']:.0f} dof per "
                     f"volume (flat: about the dof), CRPS {mean['samples.crps']:.1f} HU")
    if "interval.coverage" in mean:
        lines.append(f"calibrated {100 * mean['interval.level']:.0f} % interval ({report['interval_calibration']}) covers "
                     f"{100 * mean['interval.coverage']:.1f} %, mean width {mean['interval.mean_width_hu']:.0f} HU")
    if "calibration_out" in report:
        c = report["calibration_out"]
        lines.append(f"calibration from {report['n_patients']} patients ({c['voxels']} voxels, {c['score_kind']} score) "
                     f"-> {c['path']}")
    return lines


def run_evaluate(args: argparse.Namespace) -> int:
    if args.png is not None:
        check_writable(args.png, "--png")
    check_report_path(args.report)
    if args.calibration_out is not None:
        check_writable(args.calibration_out, "--calibration-out")
    if not 0.0 < args.interval < 1.0:
        raise UserError(f"--interval is a coverage in (0, 1), got {args.interval:g}.")
    report = evaluate_directory(args.pred, args.ref, args.out, allow_missing=args.allow_missing, reliability_png=args.png,
                                calibration=args.calibration, calibration_out=args.calibration_out, interval=args.interval)
    mean = report["mean"]
    print(f"{report['n_patients']} patients: MAE {mean['mae']:.1f} HU, PSNR {mean['psnr']:.2f} dB, "
          f"SSIM {mean['ssim']:.4f}, bone MAE {mean.get('tissue_mae.bone', float('nan')):.1f} HU -> {args.out}")
    for line in uncertainty_lines(report):
        print(line)
    if args.report:
        print(write_evaluation_report(Path(args.out), Path(args.report)))
    return 0
