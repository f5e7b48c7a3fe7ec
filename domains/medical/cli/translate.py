"""``sci-diffusion translate``: an MR volume into a SYNTHETIC CT (``translation.translate.translate_file``), or a folder
of subjects, all or part K of N of them (``translation.folder``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from sci_diffusion.errors import UserError
from sci_diffusion.report.command import check_report_path

from ..report.page import write_translation_report
from ..translation.folder import holds_subjects, translate_folder
from ..translation.options import TranslationOptions, interval_paths
from ..translation.translate import translate_file
from .arguments import TRANSLATION_MODELS, chosen_checkpoint


def run_translate(args: argparse.Namespace) -> int:
    check_report_path(args.report)  # refused before the translation, not after it
    folder = holds_subjects(args.mr)  # a folder of subjects, not one volume (or DICOM series)
    if args.report and folder:
        raise UserError("--report draws one subject's page; translate that subject alone for it.")
    ckpt = chosen_checkpoint(args, TRANSLATION_MODELS)
    options = TranslationOptions(ckpt=ckpt, samples=args.samples, uncertainty=args.uncertainty, steps=args.steps,
                                 sampler=args.sampler, spacing=args.spacing, seed=args.seed, batch_size=args.batch_size,
                                 png=args.png, ct=args.ct, trajectory_png=args.trajectory_png,
                                 shared_noise=args.shared_noise, series=args.series, interval=args.interval,
                                 calibration=args.calibration, samples_out=args.samples_out)
    if folder:
        record = translate_folder(args.mr, args.out, options, args.shard, args.mask)
        print(f"Wrote {len(record['subjects'])} SYNTHETIC CTs of {record['run_subjects']} subjects to {args.out}/<id>/"
              f"sct.nii.gz in {record['seconds']:.1f} s.")
        return 0
    if args.shard is not None:
        raise UserError("--shard splits a folder of subjects (--mr FOLDER holding <id>/mr.nii.gz); one volume "
                        "translates whole.")
    info = translate_file(args.mr, args.out, mask=args.mask, options=options)
    bounds = list(interval_paths(args.out)) if args.interval is not None else []
    written = [args.out] + [p for p in (args.uncertainty, *bounds, args.samples_out, args.png, args.trajectory_png) if p]
    print(f"Wrote {', '.join(written)} in {info['seconds']:.1f} s (SYNTHETIC CT, {info['samples']} sample(s)).")
    if args.report:
        print(write_translation_report(Path(args.out), Path(args.report), mr=args.mr, ct=args.ct, mask=args.mask,
                                       std=args.uncertainty))
    return 0
