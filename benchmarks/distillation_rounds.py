"""Rounds of progressive distillation run as ``sci-diffusion fit`` processes (issue 32), shared by the molecule and
the medical distillation benchmarks.

Round k fits ``--config`` with the previous round's slim export as teacher (round 1: the given teacher, at the given
number of uniform DDIM steps) and half its steps, on one thread for the CPU-hours of its entry in ``rounds``
(``CpuTimeBudget``; a leg resumes the round's ``last.ckpt``), then exports ``<work>/student_<steps>.ckpt``. Every
leg's wall time, CPU time and peak memory go to ``<work>/legs.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from jobs import Job, run_jobs
from reporting import saved_result

from sci_diffusion.checkpoints import export_for_inference


def parse_rounds(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``args.rounds`` (``"0.25,0.25"``) as CPU-hours per round, checked positive and that ``args.teacher_steps``
    halves once per round; a bad value exits through ``p.error`` in one sentence."""
    args.rounds = [float(h) for h in args.rounds.split(",") if h.strip()]
    if not args.rounds or min(args.rounds) <= 0:
        p.error("--rounds takes positive CPU-hours, one per round (e.g. 0.25,0.25,0.5).")
    if args.teacher_steps % 2 ** len(args.rounds):
        p.error(f"{args.teacher_steps} teacher steps cannot be halved {len(args.rounds)} times; "
                f"give --teacher-steps a multiple of {2 ** len(args.rounds)}.")


def student_steps(teacher_steps: int, rounds: int) -> list[int]:
    """The step count of each round's student: the teacher's steps halved once per round."""
    return [teacher_steps // 2 ** k for k in range(1, rounds + 1)]


def run_phases(args: argparse.Namespace, result_name: str, train: Callable, score: Callable, report: Callable) -> int:
    """A distillation benchmark's ``--phase``: ``train(args, work)``, then ``report(score(args, work), args)``, or
    ``report`` alone from the saved ``results/<result_name>.json`` with its provenance."""
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.phase in ("train", "both"):
        train(args, work)
    if args.phase in ("score", "both"):
        report(score(args, work), args)
    if args.phase == "report":
        saved, provenance = saved_result(result_name)
        report(saved["rows"], args, provenance)
    return 0


def student_file(work: Path, steps: int) -> Path:
    """Where the round that distils to ``steps`` steps leaves its slim student."""
    return work / f"student_{steps}.ckpt"


def round_config(config: Path, work: Path, k: int, teacher: Path, steps: int, hours: float,
                 overrides: dict[str, dict[str, Any]] | None = None) -> Path:
    """Round ``k``'s config: ``config`` with this round's teacher, step count, budget and folders, and ``overrides``
    (``{"model" | "data": {init argument: value}}``) merged into the init arguments."""
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["init_args"].update(distill_from=str(teacher), distill_steps=steps)
    for section, values in (overrides or {}).items():
        cfg[section]["init_args"].update(values)
    for callback in cfg["trainer"]["callbacks"]:
        if callback["class_path"].endswith("CpuTimeBudget"):
            callback["init_args"]["hours"] = hours
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["dirpath"] = str(work / f"round_{k}" / "checkpoints")
    cfg["trainer"]["logger"]["init_args"].update(save_dir=str(work / f"round_{k}"), name="log")
    out = work / f"round_{k}" / "config.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def train_rounds(config: Path, teacher: Path, teacher_steps: int, rounds: list[float], work: Path,
                 overrides: dict[str, dict[str, Any]] | None = None) -> None:
    """Each round not yet exported: fit (resumed from its ``last.ckpt``), then export; rounds run in order."""
    first = teacher = teacher.resolve()
    for k, (hours, steps) in enumerate(zip(rounds, student_steps(teacher_steps, len(rounds))), start=1):
        out = student_file(work, steps)
        if not out.is_file():
            command = [sys.executable, "-m", "sci_diffusion.cli", "fit", "--config",
                       str(round_config(config, work, k, teacher, steps, hours, overrides))]
            last = work / f"round_{k}" / "checkpoints" / "last.ckpt"
            if last.is_file():
                command += ["--ckpt_path", str(last)]
            facts = run_jobs([Job(f"round_{k}", command)], work, 1)[f"round_{k}"].facts
            legs = work / "legs.json"
            record = json.loads(legs.read_text()) if legs.is_file() else []
            legs.write_text(json.dumps(record + [{"round": k, "steps": steps, **facts}], indent=1))
            export_for_inference(last, out, {"training_budget": f"progressive distillation round {k} of "
                                             f"{first.name} ({teacher_steps} DDIM steps), "
                                             f"{hours:g} CPU-hours on one thread; student of {teacher.name}"})
        teacher = out
