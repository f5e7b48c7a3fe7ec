"""Molecule stability against CPU-hours: the QM9 recipe study (issue 28).

Each arm is a training config of ``configs/molecules/recipes/``. It trains from scratch for the same
CPU time (``--cpu-hours``, counted by ``CpuTimeBudget``), one thread per arm, ``--parallel`` arms side
by side, and saves checkpoints at the ``--marks`` (0.25, 0.5 and 1.0 CPU-hours). Each checkpoint then
draws ``--num`` molecules (sizes from the training histogram, seed 0, the CLI's default sampler) at
each of ``--steps`` (20 and 50), and every arm is scored by the same code: EDM's metric (bonds from
distances), validity, uniqueness, novelty against the QM9 training SMILES, and molecules per second.

    python benchmarks/molecules_recipes.py --arms a,c --phase train    # two arms side by side
    python benchmarks/molecules_recipes.py --arms a,c --phase score    # score what they saved
    python benchmarks/molecules_recipes.py                             # every arm, both phases

Training resumes from an arm's ``last.ckpt`` (the budget counts the CPU time of earlier legs), so the
study can be run leg by leg across sessions; scores are merged into the JSON by (arm, mark, steps),
so arms scored in different runs share one table. Writes benchmarks/results/molecules_recipes.json,
its table in docs/results/molecules_recipes.md, a headline row in the README and
docs/results/molecules_recipes.png (molecule stability against CPU-hours, one line per arm).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from jobs import Job, run_jobs  # noqa: E402

RESULT_NAME = "molecules_recipes"


@dataclass(frozen=True)
class Arm:
    letter: str
    label: str
    config: str  # relative to the repository


ARMS = {arm.letter: arm for arm in [
    Arm("a", "EDM recipe (eps, L2), the baseline", "configs/molecules/recipes/a_edm.yaml"),
    Arm("c", "EDM network, x0-prediction, clipped-SNR weight", "configs/molecules/recipes/c_x0_clipped_snr.yaml"),
    Arm("f", "EDM recipe at learning rate 1e-3", "configs/molecules/recipes/f_edm_lr1e-3.yaml"),
]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated arm letters ({', '.join(ARMS)})")
    p.add_argument("--phase", choices=["train", "score", "both"], default="both")
    p.add_argument("--work-dir", default="runs/molecules_recipes", help="where the arms train (kept across legs)")
    p.add_argument("--cpu-hours", type=float, default=1.0, help="each arm's training budget in CPU-hours")
    p.add_argument("--marks", default="0.25,0.5,1.0", help="CPU-hour marks at which checkpoints are scored")
    p.add_argument("--parallel", type=int, default=2, help="arms trained side by side (one thread each)")
    p.add_argument("--num", type=int, default=1000, help="molecules drawn per checkpoint and step count")
    p.add_argument("--steps", default="20,50", help="sampler step counts")
    p.add_argument("--sampler", default="dpmpp2m_sde", help="the CLI's default sampler")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=2, help="threads for sampling and scoring")
    p.add_argument("--no-readme", action="store_true", help="do not touch the README's headline row")
    args = p.parse_args(argv)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arm {unknown[0]!r}; the arms are {', '.join(ARMS)}.")
    args.marks = sorted(float(m) for m in args.marks.split(","))
    args.steps = [int(s) for s in args.steps.split(",")]
    if max(args.marks) > args.cpu_hours:
        p.error(f"a mark of {max(args.marks)} CPU-hours lies past the budget of {args.cpu_hours}.")
    return args


# ----- training ------------------------------------------------------------------------------------------
def checkpoint_folder(work: Path, arm: str) -> Path:
    return work / arm / "checkpoints"


def mark_checkpoint(work: Path, arm: str, mark: float) -> Path:
    return checkpoint_folder(work, arm) / f"cpu_{mark:g}h.ckpt"


def arm_config(arm: Arm, work: Path, hours: float, marks: list[float]) -> Path:
    """The arm's config with the study's budget, marks and folders, written to ``<work>/<arm>/config.yaml``."""
    cfg = yaml.safe_load((REPO / arm.config).read_text())
    for callback in cfg["trainer"]["callbacks"]:
        if callback["class_path"].endswith("CpuTimeBudget"):
            callback["init_args"].update(hours=hours, save_at=marks)
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["dirpath"] = str(checkpoint_folder(work, arm.letter))
    cfg["trainer"]["logger"]["init_args"].update(save_dir=str(work / arm.letter), name="log")
    out = work / arm.letter / "config.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def training_jobs(args: argparse.Namespace, work: Path) -> list[Job]:
    """One ``sci-diffusion fit`` per arm whose last mark is not saved yet, resumed from its ``last.ckpt``."""
    jobs = []
    for letter in args.arms:
        if mark_checkpoint(work, letter, args.marks[-1]).is_file():
            print(f"  arm {letter}: trained to {args.marks[-1]:g} CPU-hours already")
            continue
        config = arm_config(ARMS[letter], work, args.cpu_hours, args.marks)
        command = [sys.executable, "-m", "sci_diffusion.cli", "fit", "--config", str(config)]
        last = checkpoint_folder(work, letter) / "last.ckpt"
        if last.is_file():
            command += ["--ckpt_path", str(last)]
        jobs.append(Job(f"train_{letter}", command))
    return jobs


def record_legs(work: Path, done: dict[str, Job]) -> None:
    """Append each finished training leg (command, wall and CPU time, peak memory) to ``<arm>/legs.json``."""
    for name, job in done.items():
        letter = name.removeprefix("train_")
        legs_file = work / letter / "legs.json"
        legs = json.loads(legs_file.read_text()) if legs_file.is_file() else []
        legs.append({**job.facts, "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        legs_file.write_text(json.dumps(legs, indent=1))


def train(args: argparse.Namespace, work: Path) -> None:
    jobs = training_jobs(args, work)
    if jobs:
        record_legs(work, run_jobs(jobs, work, args.parallel))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.phase in ("train", "both"):
        train(args, work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
