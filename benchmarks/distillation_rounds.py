"""Rounds of progressive distillation run as ``sci-diffusion fit`` processes (issue 32), shared by the molecule and
the medical distillation benchmarks.

Round k fits ``--config`` with the previous round's slim export as teacher (round 1: the given teacher, at the given
number of uniform DDIM steps) and half its steps, on one thread for the CPU-hours of its entry in ``rounds``
(``CpuTimeBudget``; a leg resumes the round's ``last.ckpt``), then exports ``<work>/student_<steps>.ckpt``. Every
leg's wall time, CPU time and peak memory go to ``<work>/legs.json``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from jobs import Job, run_jobs

from sci_diffusion.checkpoints import export_for_inference


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
    first, steps = teacher.resolve(), teacher_steps
    teacher = first
    for k, hours in enumerate(rounds, start=1):
        steps //= 2
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
