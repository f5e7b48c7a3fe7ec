"""The checks of ``sample molecules``' flags that need no checkpoint: each problem is one sentence and exit 2,
before any model is read (``sample.py`` runs them first)."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from sci_diffusion import shards
from sci_diffusion.atomic import check_writable
from sci_diffusion.errors import UserError
from sci_diffusion.guidance import check_interval, classifier_free_passes
from sci_diffusion.polish import Polish
from sci_diffusion.restart import Restarts

from ..data.conditioning import parse_targets
from ..evaluation.geometry import XtbUnavailableError, tblite_calculator_class
from ..evaluation.triage import CandidateExpression


def check_sample_arguments(args: argparse.Namespace) -> dict[str, float] | None:
    """Everything that can be said about the flags before a checkpoint is read; returns the targets."""
    out = Path(args.out)
    if out.suffix.lower() not in (".sdf", ".xyz"):
        raise UserError(f"--out {out} must end in .sdf or .xyz.")
    check_writable(out)
    if args.png:
        check_writable(args.png, "--png")
    if args.num < 1 or args.steps < 1 or args.batch_size < 1:
        raise UserError("--num, --steps and --batch-size must be positive.")
    if args.atoms is not None and not 1 <= args.atoms <= 100:
        raise UserError(f"--atoms {args.atoms} is out of range; use 1 to 100 atoms.")
    for flag, value in (("--guidance", args.guidance), ("--gradient-guidance", args.gradient_guidance)):
        if not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number.")
    args.guidance_interval = parse_guidance_interval(args.guidance_interval, args.guidance)
    targets = parse_targets(args.condition) if args.condition else None
    if targets is not None and args.condition_from:
        raise UserError("Give either --condition or --condition-from, not both.")
    if args.condition_from and args.atoms is not None:
        raise UserError("--condition-from draws each molecule's size with its targets; drop --atoms.")
    conditional = targets is not None or args.condition_from is not None
    if args.gradient_guidance and not args.regressor:
        raise UserError("--gradient-guidance needs --regressor CKPT, a noise-aware property regressor "
                        "(e.g. the bundled checkpoints/qm9_gap_regressor.ckpt).")
    if args.gradient_guidance < 0:
        raise UserError("--gradient-guidance must not be negative.")
    if args.guidance < 0:
        raise UserError(f"--guidance {args.guidance:g} is negative: W = 0 is the unconditional model, 1 the conditional "
                        "one, above 1 pushed towards the target; below 0 would push away from it, which sample does "
                        "not offer.")
    if not conditional and (args.guidance != 1.0 or args.gradient_guidance):
        raise UserError("Guidance needs a target: add --condition NAME=VALUE or --condition-from db.")
    check_xtb_arguments(args, conditional)
    args.shard = parse_shard(args.shard, args)
    args.restart_plan = parse_restarts(args)
    args.polish_plan = parse_polish(args)
    return targets


def parse_restarts(args: argparse.Namespace) -> Restarts | None:
    """``--restarts K --restart-time T --restart-steps N`` as a ``Restarts`` (None for K = 0); UserError otherwise."""
    if args.restart_steps < 1:
        raise UserError(f"--restart-steps must be positive, not {args.restart_steps}.")
    try:
        plan = Restarts(args.restarts, args.restart_time, args.restart_steps)
    except ValueError as err:
        raise UserError(f"--restarts / --restart-time: {err}") from None
    return plan if plan.count else None


def parse_polish(args: argparse.Namespace) -> Polish | None:
    """``--polish N --polish-time T`` as a ``Polish`` (None for N = 0); UserError otherwise."""
    try:
        plan = Polish(args.polish, args.polish_time)
    except ValueError as err:
        raise UserError(f"--polish / --polish-time: {err}") from None
    return plan if plan.iterations else None


def parse_shard(text: str | None, args: argparse.Namespace) -> tuple[int, int] | None:
    """``--shard K/N`` as ``(K, N)`` (``sci_diffusion.shards``); UserError also for a flag that needs every molecule
    of the run in one process."""
    shard = shards.parse_shard(text, args.num, "molecules")
    whole_run = [flag for flag, on in (("--oversample", args.oversample > 1), ("--top-png", args.top_png)) if on]
    if shard is not None and whole_run:
        raise UserError(f"--shard writes part of a run, and {whole_run[0]} chooses among all of its molecules: run "
                        "it without --shard.")
    return shard


def check_xtb_arguments(args: argparse.Namespace, conditional: bool) -> None:
    """--xtb needs tblite; --oversample F needs --xtb and a target to be close to."""
    if args.oversample < 1:
        raise UserError(f"--oversample must be 1 or more, got {args.oversample}.")
    if args.xtb_workers < 1:
        raise UserError(f"--xtb-workers must be 1 or more, got {args.xtb_workers}.")
    if args.xtb_screen < 0:
        raise UserError(f"--xtb-screen must be 0 (relax all) or more, got {args.xtb_screen:g}.")
    if args.oversample > 1 and not args.xtb:
        raise UserError("--oversample keeps the candidates whose xTB gap lies closest to their target: add --xtb.")
    if args.oversample > 1 and not conditional:
        raise UserError("--oversample keeps candidates by their xTB gap against their gap target: add --condition "
                        "gap=VALUE or --condition-from db.")
    if args.xtb:
        try:
            tblite_calculator_class()
        except XtbUnavailableError as err:
            raise UserError(str(err)) from None


def parse_guidance_interval(text: str | None, scale: float) -> tuple[float, float] | None:
    """``--guidance-interval LO,HI`` as ``(LO, HI)`` (None when not given), or one sentence on what is wrong."""
    if text is None:
        return None
    try:
        interval = check_interval(text.split(","))  # refuses a word, NaN, reversed bounds, a third value
    except ValueError:
        raise UserError(f"--guidance-interval takes two diffusion times LO,HI with 0 <= LO < HI <= 1, such as 0.1,0.5; "
                        f"not {text!r}.") from None
    if scale in (0.0, 1.0):
        raise UserError("--guidance-interval limits classifier-free guidance: give a --guidance weight other than 0 and 1.")
    return interval


TRIAGE_FLAGS = ("filter", "rank", "top_png", "trajectory", "trajectory_molecules", "trajectory_png")


def refuse_triage_flags(args: argparse.Namespace) -> None:
    """--smiles and --fix-atoms write no candidates table and sample otherwise: refuse the triage flags there."""
    used = [f"--{name.replace('_', '-')}" for name in TRIAGE_FLAGS if getattr(args, name, None) is not None]
    used += [flag for flag, on in (("--xtb", getattr(args, "xtb", False)),
                                   ("--oversample", getattr(args, "oversample", 1) != 1)) if on]
    if used:
        raise UserError(f"{', '.join(used)} work{'s' * (len(used) == 1)} with plain and conditional sampling, "
                        f"not with {'--smiles' if args.smiles else '--fix-atoms'}.")


def check_triage_arguments(args: argparse.Namespace) -> tuple[CandidateExpression | None, CandidateExpression | None]:
    """The triage and trajectory flags, checked before any checkpoint is read; returns the parsed
    ``(filter, rank)`` expressions (None where not given)."""
    expressions = tuple(None if getattr(args, name) is None else CandidateExpression.parse(getattr(args, name), flag)
                        for name, flag in (("filter", "--filter"), ("rank", "--rank")))
    out = Path(args.out).resolve()
    for flag, path in (("--top-png", args.top_png), ("--trajectory-png", args.trajectory_png),
                       ("--trajectory", args.trajectory)):
        if path:
            check_writable(path, flag)
            if out in Path(path).resolve().parents:
                raise UserError(f"{flag} {path} lies under the --out file {args.out}; put it beside it.")
    if args.trajectory:
        trajectory = Path(args.trajectory)
        if trajectory.suffix.lower() != ".xyz":
            raise UserError(f"--trajectory {trajectory} must end in .xyz (a multi-frame XYZ file).")
        if trajectory.resolve() == out:
            raise UserError(f"--trajectory {trajectory} is the --out file; give it another name.")
    if args.trajectory_molecules is not None:
        if not args.trajectory:
            raise UserError("--trajectory-molecules needs --trajectory PATH.xyz.")
        first_batch = min(args.num, max(1, args.batch_size // classifier_free_passes(args.guidance)))
        if not 1 <= args.trajectory_molecules <= first_batch:
            raise UserError(f"--trajectory-molecules {args.trajectory_molecules} is out of range; the first batch "
                            f"holds 1 to {first_batch} molecules (--num, --batch-size, halved by --guidance).")
    return expressions
