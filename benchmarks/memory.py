"""Peak memory of the streaming verbs, run as a user runs them: one CLI process each.

- ``sample molecules --num N`` with the bundled model and the CLI's defaults (dpmpp2m_sde, 50 steps,
  --precision auto, batches of 100), for each N of ``--molecules``: the process's peak RSS, its seconds,
  and what its summary says. ``N@S`` samples N molecules at S steps instead: memory does not depend on
  the step count (the sampler keeps one batch's state and the previous step's estimate whatever the
  count; ``1000 1000@10`` shows it), time does, so the largest runs can be measured at fewer steps.
  The largest run's SDF is then scored by ``evaluate molecules`` (the EDM metric and novelty).
- ``translate`` of one whole-head phantom at ``--translate-mm`` (1 mm: 192 x 224 x 192 voxels) with
  the bundled MRI-to-CT model, ``--samples`` samples of ``--steps`` steps.

Peak RSS is each child's ``ru_maxrss`` (``os.wait4``). A run that would start after
``--budget-minutes`` is skipped and listed as skipped.

    python benchmarks/memory.py --budget-minutes 40
    python benchmarks/memory.py --budget-minutes 150 --molecules 1000 1000@10 100000@10
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import ROOT, write_result  # noqa: E402


def run_child(argv: list[str], log: Path) -> dict:
    """Run ``sci-diffusion argv`` and return its exit status, seconds and peak RSS (MB)."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        child = subprocess.Popen([sys.executable, "-m", "sci_diffusion.cli", *argv], cwd=ROOT, stdout=fh,
                                 stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    return {"command": "sci-diffusion " + " ".join(argv), "exit_status": os.waitstatus_to_exitcode(status),
            "seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def molecule_run(text: str) -> tuple[int, int | None]:
    """``"N"`` or ``"N@S"`` (``--molecules``): N molecules, at S sampler steps or the CLI's default (None)."""
    num, _, steps = text.partition("@")
    try:
        return int(num), (int(steps) if steps else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not N or N@STEPS (e.g. 1000 or 100000@10)") from None


def earlier_molecule_rows() -> list[dict]:
    """The molecule rows of the last run's ``results/memory.json``, each with the date it was measured."""
    path = ROOT / "benchmarks" / "results" / "memory.json"
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    return [{**r, "measured": r.get("measured", earlier["date"])} for r in earlier["rows"] if r["run"] != "translate"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget-minutes", type=float, required=True, help="no run starts after this")
    p.add_argument("--molecules", type=molecule_run, nargs="*", default=[(1000, None), (10000, None)],
                   help="sample molecules --num values, N or N@STEPS (at STEPS sampler steps); none (`--molecules` "
                        "alone) keeps the molecule rows of the last run's results, marked with their date, and measures "
                        "only translate")
    p.add_argument("--translate-mm", type=float, default=1.0, help="voxel size of the translated phantom (mm)")
    p.add_argument("--samples", type=int, default=1, help="translate --samples")
    p.add_argument("--steps", type=int, default=5, help="translate --steps (memory does not depend on it)")
    p.add_argument("--work-dir", default="runs/benchmarks/memory")
    p.add_argument("--no-readme", action="store_true")


def molecule_rows(args: argparse.Namespace, work: Path, budget_left) -> list[dict]:
    """``sample molecules`` at each ``--molecules`` size, then ``evaluate molecules`` on the largest, each in a
    child process of its own (its peak RSS is the child's)."""
    rows = []
    largest = max((num for num, _ in args.molecules), default=0)
    for num, steps in sorted(args.molecules, key=lambda run: (run[0], run[1] or 0)):
        name = f"{num}" if steps is None else f"{num}_at_{steps}"
        if not budget_left(f"sample molecules --num {num}" + ("" if steps is None else f" --steps {steps}")):
            continue
        sdf = work / f"molecules_{name}.sdf"
        step_flag = [] if steps is None else ["--steps", str(steps)]
        row = {"run": "sample molecules", "size": f"{num:,} molecules",
               **run_child(["sample", "molecules", "--num", str(num), *step_flag, "--out", str(sdf), "--no-progress"],
                           work / f"sample_{name}.log")}
        summary = json.loads(Path(f"{sdf}.json").read_text())
        row.update({k: summary[k] for k in ("written", "failed_non_finite", "molecules_per_second", "stable_fraction",
                                              "valid_fraction", "sampler", "steps", "spacing", "precision")})
        rows.append(row)
        print(json.dumps(row), flush=True)
        if num == largest and budget_left(f"evaluate molecules on {num}"):
            report = work / f"metrics_{name}.json"
            evaluated = {"run": "evaluate molecules", "size": f"{num:,} molecules",
                         **run_child(["evaluate", "molecules", "--samples", str(sdf), "--out", str(report)],
                                     work / f"evaluate_{name}.log")}
            evaluated["metrics"] = json.loads(report.read_text())
            rows.append(evaluated)
            print(json.dumps(evaluated), flush=True)
    return rows


def translate_row(args: argparse.Namespace, work: Path) -> dict:
    """``translate`` of a one-subject phantom at ``--translate-mm`` (written first if it is not there yet)."""
    import nibabel as nib  # the medical extra: only the translate row needs it

    phantom = work / f"phantom_{args.translate_mm:g}mm"
    if not (phantom / "1BA001" / "mr.nii.gz").is_file():
        made = run_child(["phantom", "--subjects", "1", "--spacing", str(args.translate_mm), "--seed", "99",
                          "--out", str(phantom)], work / "phantom.log")
        if made["exit_status"] != 0:
            raise SystemExit(f"writing the phantom failed; see {work / 'phantom.log'}")
    shape = nib.load(phantom / "1BA001" / "mr.nii.gz").shape
    row = {"run": "translate", "size": f"{' x '.join(map(str, shape))} voxels at {args.translate_mm:g} mm",
           **run_child(["translate", "--mr", str(phantom / "1BA001" / "mr.nii.gz"), "--mask",
                        str(phantom / "1BA001" / "mask.nii.gz"), "--samples", str(args.samples), "--steps",
                        str(args.steps), "--out", str(work / "sct.nii.gz")], work / "translate.log")}
    print(json.dumps(row), flush=True)
    return row


def render(rows: list[dict], skipped: list[str], args: argparse.Namespace) -> str:
    """The results table: one row per run, with its peak RSS, time, exit status and what it produced."""
    lines = ["| run | size | peak RSS (MB) | seconds | exit | notes |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["run"] == "sample molecules":
            note = (f"{r['sampler']} {r['steps']} {r['spacing']} {r['precision']}; {r['molecules_per_second']:.1f} mol/s; "
                    f"{100 * r['stable_fraction']:.1f} % stable, {100 * r['valid_fraction']:.1f} % valid; "
                    f"{r['failed_non_finite']} non-finite")
        elif r["run"] == "evaluate molecules":
            m = r["metrics"]
            note = ("EDM metric: " + ", ".join(f"{k.replace('_', ' ')} {100 * m[k]:.1f} %" for k in
                    ("atom_stability", "molecule_stability", "validity", "validity_x_uniqueness", "novelty") if k in m))
        else:
            note = f"{args.samples} sample(s), {args.steps} steps"
        if "measured" in r:
            note += f" (measured {r['measured']})"
        lines.append(f"| {r['run']} | {r['size']} | {r['peak_rss_mb']:,.0f} | {r['seconds']:.0f} | {r['exit_status']} "
                     f"| {note} |")
    if skipped:
        lines.append(f"\nSkipped (budget spent): {'; '.join(skipped)}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    work = ROOT / args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + 60 * args.budget_minutes
    rows, skipped = [], []

    def budget_left(what: str) -> bool:
        if time.perf_counter() < deadline:
            return True
        skipped.append(what)
        print(f"skipping {what}: the budget is spent", flush=True)
        return False

    rows.extend(molecule_rows(args, work, budget_left) if args.molecules else earlier_molecule_rows())
    if budget_left(f"translate at {args.translate_mm:g} mm"):
        rows.append(translate_row(args, work))
    write_result("memory", {"budget_minutes": args.budget_minutes, "rows": rows, "skipped": skipped},
                 render(rows, skipped, args), update_page=not args.no_readme)
    return 0 if all(r["exit_status"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
