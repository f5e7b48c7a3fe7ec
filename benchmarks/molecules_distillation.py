"""Progressive distillation of the bundled bond-aware default (issue 32): students at half the steps per round,
scored beside their teacher on the same molecules.

    python benchmarks/molecules_distillation.py --rounds 0.25,0.25,0.5 [--phase train|score|both] [--num 1000]

Training: round k is ``sci-diffusion fit --config configs/molecules/distill_bonds.yaml`` with the previous round's
slim export as teacher (round 1: ``--teacher``, at ``--teacher-steps`` uniform DDIM steps) and half its steps, on
one thread for the CPU-hours its ``--rounds`` entry gives (``CpuTimeBudget``; a leg resumes a round's
``last.ckpt``), then exported to ``<work>/student_<steps>.ckpt``. Scoring: ``--num`` molecules with the same sizes
and per-molecule seeds from the teacher (its CLI default, ``dpmpp2m_sde`` at 50 steps, and ``ddim`` at each
student's step count) and from each student (``ddim`` at its own steps), EDM's metric and MiDi's on the generated
bonds, molecules per second on ``--threads`` threads. Writes benchmarks/results/molecules_distillation.json, its
block in docs/results/molecules_distillation.md and the README row.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from sci_diffusion.checkpoints import load_module
from sci_diffusion_molecules.data.qm9 import train_smiles
from sci_diffusion_molecules.data.qm9_bonds import train_bond_smiles
from sci_diffusion_molecules.evaluation.metrics import evaluate_generated
from sci_diffusion_molecules.generation.bond_sampling import draw_molecules
from sci_diffusion_molecules.generation.sampling import draw_atom_counts

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from distillation_rounds import parse_rounds, run_phases, student_file, student_steps, train_rounds  # noqa: E402
from reporting import replace_readme_row, write_result  # noqa: E402

RESULT_NAME = "molecules_distillation"
CONFIG = REPO / "configs" / "molecules" / "distill_bonds.yaml"
TEACHER = "domains/molecules/checkpoints/qm9_bonds_x0.ckpt"
README_ROW = "Distilled default (issue 32)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", default="0.25,0.25,0.5", help="CPU-hours of each round; one entry per round")
    p.add_argument("--teacher", default=TEACHER, help="the model distilled (a bond-aware checkpoint)")
    p.add_argument("--teacher-steps", type=int, default=64, help="the teacher's DDIM steps in round 1 (even)")
    p.add_argument("--phase", choices=["train", "score", "both", "report"], default="both",
                   help="report: only rewrite the page block and README row from the saved JSON")
    p.add_argument("--work-dir", default="runs/molecules_distillation", help="rounds, logs and exports (kept)")
    p.add_argument("--num", type=int, default=1000, help="molecules per row")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=2, help="threads for sampling")
    p.add_argument("--no-readme", action="store_true", help="do not touch the README's row")
    args = p.parse_args(argv)
    parse_rounds(p, args)
    if not Path(args.teacher).is_file():
        p.error(f"The teacher {args.teacher} is not there.")
    return args


def train(args: argparse.Namespace, work: Path) -> None:
    """Each round not yet exported: fit (resumed from its ``last.ckpt``), then export (``distillation_rounds``)."""
    train_rounds(CONFIG, Path(args.teacher), args.teacher_steps, args.rounds, work)


def score_row(name: str, ckpt: Path, sampler: str, steps: int, args: argparse.Namespace) -> dict:
    """``args.num`` molecules of the checkpoint at one setting (sizes and seeds from seed 0), scored and timed."""
    module = load_module(str(ckpt), domain="molecules")
    counts = draw_atom_counts(module.atom_count_histogram, args.num, torch.Generator().manual_seed(0))
    start = time.perf_counter()
    molecules = list(draw_molecules(module, counts, sampler, steps, torch.Generator().manual_seed(0), args.batch_size,
                                    spacing="uniform" if sampler == "ddim" else None))
    seconds = time.perf_counter() - start
    m = evaluate_generated(molecules, train_smiles(), train_bond_smiles())
    own = m["generated_bonds"]
    row = {"name": name, "checkpoint": str(ckpt), "sampler": sampler, "steps": steps, "molecules": len(molecules),
           "molecule_stability": m["molecule_stability"], "atom_stability": m["atom_stability"],
           "validity": m["validity"], "validity_x_uniqueness": m["validity_x_uniqueness"], "novelty": m["novelty"],
           "own_bonds_molecule_stability": own["molecule_stability"], "own_bonds_validity": own["validity"],
           "molecules_per_second": round(len(molecules) / seconds, 2), "threads": torch.get_num_threads(),
           "training_budget": module.checkpoint_record.get("training_budget")}
    print(row, flush=True)
    return row


def score(args: argparse.Namespace, work: Path) -> list[dict]:
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    teacher = Path(args.teacher)
    rows = [score_row("teacher", teacher, "dpmpp2m_sde", 50, args),
            score_row("teacher", teacher, "ddim", args.teacher_steps, args)]
    for steps in student_steps(args.teacher_steps, len(args.rounds)):
        if not student_file(work, steps).is_file():
            print(f"No student of {steps} steps yet (train first); it is left out.", file=sys.stderr)
            break
        rows.append(score_row("teacher", teacher, "ddim", steps, args))
        rows.append(score_row(f"student {steps}", student_file(work, steps), "ddim", steps, args))
    return rows


def render(rows: list[dict], rounds: list[float]) -> str:
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = ["| model | sampler | steps | molecules | mol. stable % (EDM) | valid % | V x U % | own bonds: stable % "
             "| mol/s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['sampler']} | {r['steps']} | {r['molecules']} | {pct(r['molecule_stability'])} "
                     f"| {pct(r['validity'])} | {pct(r['validity_x_uniqueness'])} "
                     f"| {pct(r['own_bonds_molecule_stability'])} | {r['molecules_per_second']:.1f} |")
    lines.append(f"\nDistillation cost: {sum(rounds):g} CPU-hours of training on one thread (each round's "
                 f"CpuTimeBudget: {', '.join(f'{h:g}' for h in rounds)}), counted over all of a round's legs.")
    return "\n".join(lines)


def report(rows: list[dict], args: argparse.Namespace, provenance: dict | None = None) -> None:
    """The page block, JSON and README row of scored ``rows``."""
    students = [r for r in rows if r["name"].startswith("student")]
    rounds = args.rounds[:len(students)]
    markdown = render(rows, rounds)
    print(markdown)
    write_result(RESULT_NAME, {"rows": rows, "num": rows[0]["molecules"], "rounds_cpu_hours": rounds}, markdown,
                 update_page=not args.no_readme, provenance=provenance)
    if students and not args.no_readme:
        best, ref = students[-1], rows[0]
        own = next(r for r in rows if r["name"] == "teacher" and r["sampler"] == "ddim" and r["steps"] == best["steps"])
        pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
        replace_readme_row(README_ROW, f"| {README_ROW} | {best['steps']} DDIM steps: {pct(best['molecule_stability'])} % "
                           f"stable, {pct(best['validity'])} % valid (the teacher's own {best['steps']} DDIM steps: "
                           f"{pct(own['molecule_stability'])} %; its 50 `dpmpp2m_sde` steps: "
                           f"{pct(ref['molecule_stability'])} %), {best['molecules']} molecules "
                           f"| MolTD 92.5 % at 12 steps | {sum(rounds):g} CPU-hours of distillation, one thread "
                           "| [molecules_distillation](docs/results/molecules_distillation.md) |")


def main(argv: list[str] | None = None) -> int:
    return run_phases(parse_args(argv), RESULT_NAME, train, score, report)


if __name__ == "__main__":
    raise SystemExit(main())
