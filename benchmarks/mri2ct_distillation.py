"""Progressive distillation of the phantom-v2 residual MRI-to-CT model (issue 32 §2, medical): a student at 2 steps
beside its teacher at its 10, on the same subjects and seeds.

    python benchmarks/mri2ct_distillation.py --rounds 0.5,0.5 [--phase train|score|both|report]

Training (``distillation_rounds``): round 1 fits ``configs/medical/distill_residual.yaml`` with the bundled residual
model (``--teacher``) at ``--teacher-steps`` uniform DDIM steps as teacher and half its steps, round 2 halves again
from round 1's export (8 -> 4 -> 2), each on one thread for the CPU-hours of its ``--rounds`` entry; the student
shares the teacher's frozen regression (``--regression``) and trains on the same 20 t1 phantoms.

Scoring (``mri2ct_v2``'s own steps 3-4): each row translates the calibration subjects (6 t1 and 6 pd) and the test
subjects of ``--test-sets`` with K = ``--samples`` samples, fits its own split-conformal ``--interval`` on the
calibration subjects and scores the test subjects with it. Rows: the teacher at ``--reference-steps`` (translate's
default, 10) and at the last student's steps, and every student at its own. Issue 32's target, per test set: the
last student's K-mean MAE at most 2 HU above the teacher's 10-step MAE (paired over subjects, with a bootstrap
interval), and its interval's coverage within 3 points of the teacher's. Writes
benchmarks/results/mri2ct_distillation.json, its block in docs/results/molecules_distillation.md and the README row.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from distillation_rounds import parse_rounds, run_phases, student_file, student_steps, train_rounds  # noqa: E402
from mri2ct_phantom import json_safe  # noqa: E402
from mri2ct_v2 import TEST_SETS, evaluate_model, interval_cell, make_row, write_phantom_sets  # noqa: E402
from reporting import replace_readme_row, write_result  # noqa: E402

RESULT_NAME = "mri2ct_distillation"
CONFIG = REPO / "configs" / "medical" / "distill_residual.yaml"
CHECKPOINTS = REPO / "domains" / "medical" / "checkpoints"
README_ROW = "Distilled MRI-to-CT residual model (issue 32)"
MAE_TOLERANCE_HU, COVERAGE_TOLERANCE = 2.0, 0.03  # issue 32: within 2 HU of the 10-step MAE, coverage within 3 points


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", default="0.5,0.5", help="CPU-hours of each round; one entry per round")
    p.add_argument("--teacher", default=str(CHECKPOINTS / "mri2ct_v2_residual.ckpt"), help="the residual model distilled")
    p.add_argument("--regression", default=str(CHECKPOINTS / "mri2ct_v2_regression.ckpt"), help="its regression")
    p.add_argument("--teacher-steps", type=int, default=8, help="the teacher's uniform DDIM steps in round 1")
    p.add_argument("--reference-steps", type=int, default=10, help="the teacher's steps the students are judged against")
    p.add_argument("--phase", choices=["train", "score", "both", "report"], default="both",
                   help="report: only rewrite the page block and README row from the saved JSON")
    p.add_argument("--test-sets", default="in-domain", help=f"comma-separated, from: {', '.join(TEST_SETS)}")
    p.add_argument("--subjects-calibration", type=int, default=6, help="per calibration family (t1, pd)")
    p.add_argument("--subjects-test", type=int, default=12)
    p.add_argument("--samples", type=int, default=8, help="K")
    p.add_argument("--interval", type=float, default=0.9)
    p.add_argument("--spacing", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-threads", type=int, default=2)
    p.add_argument("--budget-minutes", type=float, default=600.0, help="no subject's translation starts after this")
    p.add_argument("--seed", type=int, default=0, help="the phantoms' seed (mri2ct_v2's)")
    p.add_argument("--work-dir", default="runs/mri2ct_distillation", help="rounds, logs, phantoms and predictions (kept)")
    p.add_argument("--no-readme", action="store_true", help="do not touch docs/results or the README")
    p.add_argument("--rows", help="score only these rows, e.g. teacher@10,student@2 (default: all; two processes "
                   "may score different rows at once, and a later run reads every finished row back)")
    args = p.parse_args(argv)
    args.rows = None if args.rows is None else {r.strip() for r in args.rows.split(",") if r.strip()}
    args.test_sets = tuple(s.strip() for s in args.test_sets.split(",") if s.strip())
    parse_rounds(p, args)
    students = student_steps(args.teacher_steps, len(args.rounds))
    known = {f"teacher@{args.reference_steps}", *(f"{who}@{k}" for k in students for who in ("teacher", "student"))}
    if args.rows is not None and not args.rows <= known:
        p.error(f"--rows names {', '.join(sorted(args.rows - known))}; this run's rows are {', '.join(sorted(known))}.")
    unknown = [s for s in args.test_sets if s not in TEST_SETS]
    if unknown or not args.test_sets:
        p.error(f"--test-sets takes names from: {', '.join(TEST_SETS)}.")
    for flag, path in (("--teacher", args.teacher), ("--regression", args.regression)):
        if not Path(path).is_file():
            p.error(f"{flag} {path} is not there.")
    return args


def train(args: argparse.Namespace, work: Path) -> None:
    overrides = {"model": {"regression_ckpt": str(Path(args.regression).resolve())},
                 "data": {"root": str(work / "phantoms_train")}}
    train_rounds(CONFIG, Path(args.teacher), args.teacher_steps, args.rounds, work, overrides)


def score(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """The rows: the teacher at the reference steps and at the last student's, then each student at its own."""
    counts = {"calibration": args.subjects_calibration, **{name: args.subjects_test for name in args.test_sets}}
    sets = write_phantom_sets(work, counts, args.spacing, args.seed)  # mri2ct_v2's subjects, seeds and ids
    deadline = time.perf_counter() + 60.0 * args.budget_minutes
    students = student_steps(args.teacher_steps, len(args.rounds))
    settings = [("teacher", Path(args.teacher), args.reference_steps), ("teacher", Path(args.teacher), students[-1])]
    for steps in students:
        if not student_file(work, steps).is_file():
            print(f"No student of {steps} steps yet (train first); it is left out.", file=sys.stderr)
            break
        settings.append((f"student {steps}", student_file(work, steps), steps))
    rows = []
    for name, ckpt, steps in settings:
        if args.rows is None or f"{name.split()[0]}@{steps}" in args.rows:
            rows += scored_rows(name, ckpt, steps, sets, work, args, deadline)
    return rows


ROW_SETTINGS = ("samples", "interval", "spacing", "subjects_calibration", "subjects_test", "seed", "eval_threads")


def scored_rows(name: str, ckpt: Path, steps: int, sets: dict[str, Path], work: Path, args: argparse.Namespace,
                deadline: float) -> list[dict[str, Any]]:
    """One model at one step count on every test set: read back from ``<work>/rows/`` when scored before with the same
    checkpoint (its sha256) and settings, else translated, calibrated and scored (``mri2ct_v2.evaluate_model``)."""
    from sci_diffusion.checkpoints import file_sha256

    label = f"{name.replace(' ', '_')}_at_{steps}"
    key = {"checkpoint_sha256": file_sha256(ckpt), "steps": steps, "test_sets": list(args.test_sets),
           **{k: getattr(args, k) for k in ROW_SETTINGS}}
    saved = work / "rows" / f"{label}.json"
    earlier = json.loads(saved.read_text()) if saved.is_file() else None
    if earlier is not None and earlier["key"] == key:
        print(f"{label}: scored before with the same checkpoint and settings; read back from {saved}", flush=True)
        return earlier["rows"]
    row_args = argparse.Namespace(**{**vars(args), "steps": steps})
    results = evaluate_model(label, {"checkpoint": str(ckpt), "kind": "residual"}, sets, work, row_args, deadline,
                             args.test_sets)
    rows = []
    for set_name in args.test_sets:
        row = make_row(set_name, name, results[set_name], args.samples)
        rows.append({**row, "steps": steps, "checkpoint": str(ckpt)})
        print({k: row[k] for k in ("test_set", "model", "subjects", "mae_hu", "interval_coverage")}, flush=True)
    if not any(row["skipped"] for row in rows):  # a row the budget cut short is scored again next time
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({"key": key, "rows": json_safe(rows)}, indent=1))
    return rows


def verdicts(rows: list[dict], reference_steps: int) -> dict[str, Any]:
    """Per test set: the last student against the teacher at ``reference_steps``, on the subjects both scored."""
    from sci_diffusion_medical.evaluation.statistics import paired_comparison

    out: dict[str, Any] = {}
    students = [r for r in rows if r["model"].startswith("student")]
    for set_name in dict.fromkeys(r["test_set"] for r in rows):
        student = next((r for r in reversed(students) if r["test_set"] == set_name), None)
        teacher = next((r for r in rows if r["test_set"] == set_name and r["model"] == "teacher"
                        and r["steps"] == reference_steps), None)
        if student is None or teacher is None:
            continue
        ids = sorted(set(student["per_subject"]["mae_hu"]) & set(teacher["per_subject"]["mae_hu"]))
        mae, crps = (paired_comparison([student["per_subject"][metric][i] for i in ids],  # subject by subject
                                       [teacher["per_subject"][metric][i] for i in ids]) for metric in ("mae_hu", "crps_hu"))
        coverage = student["interval_coverage"]["mean"] - teacher["interval_coverage"]["mean"]
        out[set_name] = {"student_steps": student["steps"], "mae_difference_hu": mae["mean_difference"],
                         "mae_difference_interval": mae["difference_interval"], "subjects": mae["n"],
                         "mae_met": mae["mean_difference"] <= MAE_TOLERANCE_HU,
                         "coverage_difference": coverage, "coverage_met": abs(coverage) <= COVERAGE_TOLERANCE,
                         "crps_difference_hu": crps["mean_difference"], "crps_difference_interval": crps["difference_interval"]}
        out[set_name]["met"] = out[set_name]["mae_met"] and out[set_name]["coverage_met"]
    return out


def render(rows: list[dict], decided: dict[str, Any], rounds: list[float], args: argparse.Namespace) -> str:
    f = interval_cell
    lines = [f"SYNTHETIC head phantoms v2 at {args.spacing:g} mm; K = {args.samples} samples per subject, DDIM; each row's "
             f"{100 * args.interval:g} % interval calibrated (split conformal) on {args.subjects_calibration} t1 and "
             f"{args.subjects_calibration} pd subjects of its own; means over subjects with bootstrap 95 % intervals.", "",
             f"| test set | model | steps | subjects | MAE (HU) | {100 * args.interval:g} % interval covers (mean width, HU) "
             "| [min, max] covers | CRPS (HU) | a sample's gradient ratio | samples' ambiguous % | s / volume |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['test_set']} | {r['model']} | {r['steps']} | {r['subjects']} | {f(r['mae_hu'], '.1f')} | "
                     f"{f(r['interval_coverage'], '.1f', 100)} ({f(r['interval_width_hu'], '.0f')}) | "
                     f"{f(r['minmax_coverage'], '.1f', 100)} | {f(r['crps_hu'], '.1f')} | "
                     f"{f(r['gradient_ratio_sample'], '.2f')} | {f(r['ambiguous_samples'], '.1f', 100)} | "
                     f"{f(r['seconds_per_volume'], '.1f')} |")
    k = args.samples
    lines.append(f"\n[min, max] of K = {k} samples covers {100 * (k - 1) / (k + 1):.1f} % when the samples are calibrated; "
                 "the gradient ratio is a sample's mean gradient magnitude inside the body over the CT's (1: as "
                 "textured as CT); ambiguous: true bone and air voxels a sample puts at -500 to +300 HU.")
    lines.append(f"\nDistillation cost: {sum(rounds):g} CPU-hours of training on one thread (each round's "
                 f"CpuTimeBudget: {', '.join(f'{h:g}' for h in rounds)}), counted over all of a round's legs.")
    lines.append(f"\nTarget (issue 32): the last student's MAE at most {MAE_TOLERANCE_HU:g} HU above the teacher's "
                 f"{args.reference_steps}-step MAE (paired over subjects) and its coverage within "
                 f"{100 * COVERAGE_TOLERANCE:g} points of the teacher's:")
    for set_name, v in decided.items():
        lines.append(f"- {set_name}: {'met' if v['met'] else '**not met**'}: student at {v['student_steps']} steps, "
                     f"MAE {v['mae_difference_hu']:+.1f} HU [{v['mae_difference_interval'][0]:+.1f}, "
                     f"{v['mae_difference_interval'][1]:+.1f}] over {v['subjects']} subjects "
                     f"({'met' if v['mae_met'] else 'not met'}), coverage {100 * v['coverage_difference']:+.1f} points "
                     f"({'met' if v['coverage_met'] else 'not met'}); CRPS {v['crps_difference_hu']:+.1f} HU "
                     f"[{v['crps_difference_interval'][0]:+.1f}, {v['crps_difference_interval'][1]:+.1f}] (not a target)")
    return "\n".join(lines)


def report(rows: list[dict], args: argparse.Namespace, provenance: dict | None = None) -> None:
    """The JSON, page block and README row of scored ``rows``."""
    decided = verdicts(rows, args.reference_steps)
    students = sorted({r["steps"] for r in rows if r["model"].startswith("student")}, reverse=True)
    rounds = args.rounds[:len(students)]
    markdown = render(rows, decided, rounds, args)
    print(markdown)
    write_result(RESULT_NAME, json_safe({"rows": rows, "verdicts": decided, "rounds_cpu_hours": rounds,
                                         "reference_steps": args.reference_steps, "samples": args.samples}),
                 markdown, update_page=not args.no_readme, provenance=provenance)
    if decided and not args.no_readme:
        replace_readme_row(README_ROW, readme_row(rows, decided, rounds, args))


def readme_row(rows: list[dict], decided: dict[str, Any], rounds: list[float], args: argparse.Namespace) -> str:
    """The README's row: per test set, the last student beside the teacher at the reference steps and at its own."""
    def cells(set_name: str, v: dict) -> str:
        by = {(r["model"], r["steps"]): r for r in rows if r["test_set"] == set_name}
        student = by[(f"student {v['student_steps']}", v["student_steps"])]
        teacher, own = by.get(("teacher", args.reference_steps)), by.get(("teacher", v["student_steps"]))
        text = (f"{set_name} ({student['subjects']} phantoms): MAE {student['mae_hu']['mean']:.1f} HU "
                f"(teacher {teacher['mae_hu']['mean']:.1f}), "
                f"90 % interval covers {100 * student['interval_coverage']['mean']:.1f} % "
                f"({100 * teacher['interval_coverage']['mean']:.1f}), CRPS {student['crps_hu']['mean']:.1f} HU "
                f"({teacher['crps_hu']['mean']:.1f}), {'met' if v['met'] else 'not met'}")
        if own is not None:
            text += (f"; the teacher's own {v['student_steps']} steps: CRPS {own['crps_hu']['mean']:.1f} HU, "
                     f"[min, max] of K covers {100 * own['minmax_coverage']['mean']:.0f} % "
                     f"(student {100 * student['minmax_coverage']['mean']:.0f} %)")
        return text

    steps = next(iter(decided.values()))["student_steps"]
    return (f"| {README_ROW} | {steps} DDIM steps against the teacher's {args.reference_steps}, K = {args.samples}: "
            + "; ".join(cells(s, v) for s, v in decided.items())
            + f" | none (target: within 2 HU, coverage within 3 points) | {sum(rounds):g} CPU-hours of "
            "distillation, one thread | [mri2ct_distillation](docs/results/molecules_distillation.md) |")


def main(argv: list[str] | None = None) -> int:
    return run_phases(parse_args(argv), RESULT_NAME, train, score, report)


if __name__ == "__main__":
    raise SystemExit(main())
