"""The flags of the medical CLI verbs (``phantom``, ``translate``, ``evaluate mri2ct``, ``synthesize medical``,
``audit medical``): argparse tables only, so ``sci-diffusion --help`` imports no MONAI, nibabel or torch.

Each verb's ``run_*`` lives in a module of its own in this folder (``phantom.py``, ``translate.py``,
``evaluate.py``, ``synthesize.py``, ``audit.py``), which imports what it needs at its top; ``domain.py``
names them by string, so they are imported only when their command runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from sci_diffusion.checkpoints import bundled_checkpoint
from sci_diffusion.names import SAMPLER_NAMES, SPACINGS

# translate --model NAME: the bundled checkpoint it names (BUNDLED_CHECKPOINTS keys of sci_diffusion_medical)
TRANSLATION_MODELS = {"residual": "translation", "regression": "regression", "diffusion": "diffusion",
                      "residual-v2": "translation_v2", "regression-v2": "regression_v2",
                      "residual-v2-2steps": "translation_v2_2steps"}
# synthesize medical --model NAME: likewise
SYNTHESIS_MODELS = {"slice": "synthesis", "latent": "latent_synthesis"}


def add_checkpoint_choice(p: argparse.ArgumentParser, models: dict[str, str], ckpt_help: str, model_help: str) -> None:
    """``--ckpt PATH`` or ``--model NAME`` (a key of ``models``), not both: a command's model (:func:`chosen_checkpoint`)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--ckpt", help=ckpt_help)
    group.add_argument("--model", choices=tuple(models), help=model_help)


def chosen_checkpoint(args: argparse.Namespace, models: dict[str, str]) -> str | Path | None:
    """``--ckpt``, or the bundled file ``--model`` names (``models``: name -> ``BUNDLED_CHECKPOINTS`` key); None: neither
    was given, and the command takes its default."""
    return bundled_checkpoint("sci_diffusion_medical", models[args.model]) if args.model else args.ckpt


def add_phantom_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subjects", type=int, required=True, help="number of paired head phantoms to write")
    p.add_argument("--out", required=True, help="output folder (SynthRAD layout <out>/<id>/{mr,ct,mask,labels}.nii.gz)")
    p.add_argument("--spacing", type=float, default=2.0, help="isotropic voxel size in mm (default 2: 96 x 112 x 96)")
    p.add_argument("--seed", type=int, default=0, help="subject i is drawn from the seed (seed, i)")
    p.add_argument("--scanner", choices=("default", "shifted"), default="default",
                   help="how the MR is imaged: 'shifted' is another scanner (tissue contrasts, stronger bias field, "
                        "more noise), for robustness tests; the anatomy and CT of a seed do not change (version 1)")
    p.add_argument("--version", type=int, choices=(1, 2), default=1,
                   help="1 (default; the phantoms of every published number so far) or 2 (issue 30): bone, teeth and air "
                        "all dark on MR; mastoid air cells, sinuses, nasal cavity, orbits, teeth, mandible (and a "
                        "structures.nii.gz naming them); the MR misregistered against the CT by a rotation of at most 2 "
                        "degrees, a shift of at most 1.5 mm and a smooth deformation of at most 2 mm; a field of view of "
                        "192 x 224 mm by 200-250 mm high; per-subject random contrasts")
    p.add_argument("--contrast", choices=("t1", "t2", "pd"),
                   help="version 2's MR contrast family: t1 (default; T1-weighted-like, for training), t2 "
                        "(T2-weighted-like, held out for robustness tests) or pd (proton-density-like, for calibrating "
                        "intervals across scanner families)")


def add_translate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mr", required=True, help="input T1 MR volume: .nii.gz/.nii, .mha/.mhd, .nrrd or a DICOM series folder; "
                                            "resampled to the model's voxel size, and the sCT written back on its grid. "
                                            "A folder of subjects (<id>/mr.nii.gz, with mask.nii.gz when present) writes "
                                            "<out>/<id>/sct.nii.gz for each")
    p.add_argument("--shard", metavar="K/N", help="with --mr FOLDER: translate only part K of N of its subjects (sorted by "
                                                 "id; a SLURM array task, a torchrun rank); the parts' --out folders "
                                                 "together are the whole run")
    p.add_argument("--out", required=True, help="output synthetic CT in HU (.nii.gz, .nii or .mha) on the MR's grid; a .json "
                                             "sidecar is written beside it")
    p.add_argument("--mask", help="body mask on the MR grid (any --mr format); derived from the MR (SynthRAD recipe) "
                                   "when absent")
    add_checkpoint_choice(
        p, TRANSLATION_MODELS,
        ckpt_help="model checkpoint (residual, plain diffusion or regression); default: the bundled residual diffusion "
                  "model (checkpoints/README.md)",
        model_help="a bundled model instead of --ckpt: residual (default; phantom v1), regression, diffusion "
                   "(phantom v1), or residual-v2 and regression-v2 (trained on phantom v2 with random contrasts; "
                   "residual-v2 ships an interval calibration for --samples 8, ddim, 10 steps), or residual-v2-2steps "
                   "(residual-v2 distilled to 2 ddim steps, its calibration for --samples 8)")
    p.add_argument("--samples", type=int, default=1, help="K diffusion samples; the output is their mean (default 1)")
    p.add_argument("--uncertainty", help="write the per-voxel std over the K samples (HU) here (.nii.gz or .mha; "
                                          "needs --samples >= 2)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the model's own, the count it was validated with; "
                                             "10 for the bundled residual model)")
    p.add_argument("--shared-noise", action="store_true",
                   help="start every slice of a sample from the same noise, for slices that agree with each other")
    p.add_argument("--sampler", default="ddim", choices=SAMPLER_NAMES, help="core sampler (default ddim)")
    p.add_argument("--spacing", choices=SPACINGS, help="the sampler's time grid (not the voxel size): uniform, "
                                                        "quadratic, cubic or logsnr (default: the sampler's own; ddim: uniform)")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting noise (default 0)")
    p.add_argument("--batch-size", type=int, default=16, help="slices per network call (default 16)")
    p.add_argument("--png", help="write an MR / sCT / CT / |error| / std panel here (.png)")
    p.add_argument("--ct", help="reference CT on the MR grid (any --mr format), for the panel's CT and error images")
    p.add_argument("--interval", type=float, metavar="LEVEL",
                   help="also write a per-voxel interval that covers the CT with this probability (e.g. 0.9) as "
                        "<out>_lower and <out>_upper; needs --calibration, or a model that ships one (--model residual-v2)")
    p.add_argument("--calibration", metavar="CAL.json",
                   help="the interval's split-conformal calibration, fitted on subjects the model never saw with the same "
                        "checkpoint, --samples, --sampler and --steps (evaluate mri2ct --calibration-out)")
    p.add_argument("--samples-out", help="write the K samples as one 4-D NIfTI (X, Y, Z, K) in HU here (.nii.gz), for "
                                         "evaluate mri2ct's rank histogram, [min, max] coverage and CRPS")
    p.add_argument("--series", help="when --mr is a DICOM folder that holds several series: the SeriesInstanceUID to "
                                    "read (without it such a folder is refused, with its series listed)")
    p.add_argument("--trajectory-png", help="draw how the body's middle slice forms: the sampler's state and its CT "
                                            "estimate at a few evenly spaced steps (.png; diffusion models only)")
    p.add_argument("--report", metavar="PAGE.html", help="also write one self-contained HTML page (sci-diffusion report): "
                                                        "MR, sCT, CT, |error| and std as linked 3-D views, opens offline")


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, help="folder of synthetic CTs: <id>.nii.gz or <id>/sct.nii.gz (or .mha; HU)")
    p.add_argument("--ref", required=True, help="SynthRAD-layout reference folder: <id>/{ct,mask}.nii.gz (2023) or .mha (2025)")
    p.add_argument("--out", required=True, help="metrics report (.json)")
    p.add_argument("--allow-missing", action="store_true", help="score the patients that have a prediction, list the rest")
    p.add_argument("--png", help="with <id>_std files: draw the calibration (reliability) diagram here (.png)")
    p.add_argument("--calibration-out", metavar="CAL.json",
                   help="fit a split-conformal interval calibration on these patients (subjects the model never saw) and "
                        "write it here, for translate --interval --calibration")
    p.add_argument("--calibration", metavar="CAL.json",
                   help="report each patient's coverage of the calibrated --interval (out of sample on other subjects)")
    p.add_argument("--interval", type=float, default=0.9, help="the interval's coverage level (default 0.9)")
    p.add_argument("--report", metavar="PAGE.html", help="also write one self-contained HTML page (sci-diffusion report): "
                                                        "the metrics, the reliability diagram, the worst patient's views")


def add_audit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--synthetic", required=True, help="folder of synthetic subjects (SynthRAD layout <id>/ct with optional "
                                                     "mask and labels, any readable format)")
    p.add_argument("--train", required=True, help="folder of the generator's training subjects (SynthRAD layout)")
    p.add_argument("--held-out", help="folder of real subjects the generator did not train on: their nearest-training "
                                      "distances are the reference (default: leave-one-out within --train)")
    p.add_argument("--out", required=True, help="audit report (.json)")
    p.add_argument("--png", help="draw the worst slice pairs of the most extreme synthetic subjects here (.png)")
    p.add_argument("--percentile", type=float, default=5.0,
                   help="flag a distance below this percentile of the reference distribution (0 < p < 50; default 5)")
    p.add_argument("--spacing-mm", type=float, default=4.0,
                   help="isotropic voxel size the subjects are compared at, in mm (default 4)")
    p.add_argument("--box-mm", type=float, default=256.0,
                   help="edge of the cube around each body's centroid that is compared, in mm (default 256)")


def add_synthesize_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num", type=int, help="number of synthetic subjects (with --labels: default one per label map)")
    p.add_argument("--labels", metavar="DIR", help="a 3-D latent generator only: MR and CT for your own tissue label "
                                                 "maps (DIR/<id>/labels.nii.gz or DIR/*.nii.gz, the model's tissue "
                                                 "classes), resampled to the model's voxels and placed on its grid")
    p.add_argument("--guidance", type=float, help="a 3-D latent generator only: classifier-free guidance weight on the "
                                                 "labels (default: the model's; 1 is the plain conditional model)")
    p.add_argument("--out", required=True, help="output folder: SynthRAD layout <out>/<id>/{mr,ct,mask,labels}.nii.gz, "
                                             "dataset.json and contact_sheet.png")
    p.add_argument("--seed", type=int, default=0, help="subject i is drawn from the seed sequence (seed, i) (default 0)")
    p.add_argument("--shard", metavar="K/N", help="write only part K of N of the run's --num subjects (a SLURM array task, "
                                                 "a torchrun rank), each part to its own --out: the same subjects as the "
                                                 "whole run, whose union the parts are")
    add_checkpoint_choice(
        p, SYNTHESIS_MODELS,
        ckpt_help="paired synthesis checkpoint (default: the bundled 3-D latent generator, checkpoints/README.md)",
        model_help="a bundled generator instead of --ckpt: latent (the default; phantom v2, labels first, 3-D latents) "
                   "or slice (the earlier one: phantom v1, 2-D slices with noise correlated along the volume)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (default 50)")
    p.add_argument("--sampler", default="ddpm", choices=SAMPLER_NAMES,
                   help="core sampler (default ddpm, ancestral; deterministic ones give noise-like slices on the slice model)")
    p.add_argument("--format", choices=("synthrad", "nnunet"), default="synthrad",
                   help="nnunet: also write the nnU-Net v2 layout (imagesTr, labelsTr, dataset.json) in <out>/nnunet")
    p.add_argument("--png", help="contact sheet (.png; default <out>/contact_sheet.png)")
    p.add_argument("--spacing", type=float, help="write the subjects at this isotropic voxel size in mm (MONAI Spacingd: "
                                                 "linear images, nearest labels); default: the model's grid (4 mm)")
    p.add_argument("--report", metavar="PAGE.html", help="also write one self-contained HTML page (sci-diffusion report): "
                                                        "contact sheet, per-tissue fidelity, the first subject's views")
