"""Molecule stability against CPU-hours: the QM9 recipe study (issue 28).

Each arm is a training config of ``configs/molecules/recipes/``. It trains from scratch for the same
CPU time (``--cpu-hours``, counted by ``CpuTimeBudget``), one thread per arm, ``--parallel`` arms side
by side, and saves checkpoints at the ``--marks`` (0.25, 0.5 and 1.0 CPU-hours). Each checkpoint then
draws ``--num`` molecules (sizes from the training histogram, seed 0, the CLI's default sampler) at
each of ``--steps`` (20 and 50), and every arm is scored by the same code: EDM's metric (bonds from
distances), validity, uniqueness, novelty against the QM9 training SMILES, molecules per second, and
the geometry check: the GFN2-xTB energy drop when the first ``--xtb-num`` molecules are relaxed
(``evaluation/geometry.py``; needs ``pip install '.[xtb]'``), beside the same check on as many real
QM9 test-split geometries, the floor of that number.

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
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from sci_diffusion.checkpoints import load_module
from sci_diffusion_molecules.data.qm9 import train_smiles
from sci_diffusion_molecules.data.qm9_bonds import train_bond_smiles
from sci_diffusion_molecules.evaluation.geometry import qm9_relaxation_floor, relaxation_summary
from sci_diffusion_molecules.evaluation.metrics import evaluate_generated
from sci_diffusion_molecules.generation.bond_sampling import draw_molecules
from sci_diffusion_molecules.generation.sampling import draw_atom_counts

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from jobs import Job, run_jobs  # noqa: E402
from reporting import RESULTS, replace_readme_row, saved_result, write_result  # noqa: E402

RESULT_NAME = "molecules_recipes"
XTB_FIELDS = ("median_drop_kcal_per_mol", "p90_drop_kcal_per_mol", "scored", "molecules", "unscorable_fraction")
PLOT = REPO / "docs" / "results" / "molecules_recipes.png"


@dataclass(frozen=True)
class Arm:
    letter: str
    label: str
    config: str  # relative to the repository
    sampler: str | None = None  # None: the study's --sampler; a flow model may need its own
    branch_from: tuple[str, float] | None = None  # (arm, mark): resume that arm's mark checkpoint instead of starting
    warm_started: bool = False  # its config starts from a trained model's weights (init_from)

    @property
    def from_scratch(self) -> bool:
        """Whether the arm runs in the study's equal-time race (not a branch or warm start of another arm)."""
        return self.branch_from is None and not self.warm_started


ARMS = {arm.letter: arm for arm in [
    Arm("a", "EDM recipe (eps, L2), the baseline", "configs/molecules/recipes/a_edm.yaml"),
    Arm("b", "GeoLDM latent model, as its code does it", "configs/molecules/recipes/b_geoldm.yaml"),
    Arm("c", "EDM network, x0-prediction, clipped-SNR weight", "configs/molecules/recipes/c_x0_clipped_snr.yaml"),
    # a flow with an aligned coupling: x_t given x0 is no longer Gaussian, so only the ODE samplers are exact
    Arm("d", "flow matching (rectified flow, x0), Kabsch + assignment coupling", "configs/molecules/recipes/d_flow_aligned.yaml",
        sampler="ddim"),
    Arm("e", "bond-aware EDM: bond orders on every atom pair, marginal-prior discrete diffusion",
        "configs/molecules/recipes/e_bonds.yaml"),
    # chosen after the first marks: (c) beat (a) at each and (e) led at 0.5 CPU-hours; do the two gains add?
    Arm("f", "bond-aware, x0-prediction, clipped-SNR weight (EQGAT-diff's recipe)",
        "configs/molecules/recipes/f_bonds_x0_clipped_snr.yaml"),
    # branches of (f), chosen after its 4 -> 6 CPU-hour gain was 1.5 points: its weights, optimiser, EMA and CPU
    # clock go on from f's 6 CPU-hour checkpoint, with the learning rate cooled to zero by the budget
    Arm("g", "(f) branched at 6 CPU-hours, learning rate cooled linearly to zero", "configs/molecules/recipes/g_cooldown.yaml",
        branch_from=("f", 6.0)),
    Arm("h", "(g) with the clipped-SNR ceiling at 100 (EQGAT-diff: 1.5)", "configs/molecules/recipes/h_cooldown_gamma100.yaml",
        branch_from=("f", 6.0)),
    # (h) won at 7 CPU-hours (85.0 % stable against g's 77.2); the default trains on as (h) from a later mark of
    # the trunk, cooled over 2 CPU-hours (h: 1), so that the bundled model has 10 CPU-hours behind it
    Arm("i", "(h) branched at 8 CPU-hours, cooled over 2", "configs/molecules/recipes/h_cooldown_gamma100.yaml",
        branch_from=("f", 8.0)),
    # (i) was lost at 9.06 CPU-hours with the machine that held it (and f with it); the default goes on from the
    # slim export of (h) instead, warm-started with a fresh optimiser
    Arm("j", "(h) warm-started from its 7 CPU-hour export, re-warmed to 2e-4, cooled to zero by the budget",
        "configs/molecules/recipes/j_warm_restart.yaml", warm_started=True),
]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated arm letters ({', '.join(ARMS)})")
    p.add_argument("--phase", choices=["train", "score", "both", "report"], default="both",
                   help="report: only rewrite the page, plot and README row from the saved JSON")
    p.add_argument("--work-dir", default="runs/molecules_recipes", help="where the arms train (kept across legs)")
    p.add_argument("--cpu-hours", type=float, default=1.0, help="each arm's training budget in CPU-hours")
    p.add_argument("--marks", default="0.25,0.5,1.0", help="CPU-hour marks at which checkpoints are scored")
    p.add_argument("--parallel", type=int, default=2, help="arms trained side by side (one thread each)")
    p.add_argument("--num", type=int, default=1000, help="molecules drawn per checkpoint and step count")
    p.add_argument("--steps", default="20,50", help="sampler step counts")
    p.add_argument("--sampler", default="dpmpp2m_sde", help="the CLI's default sampler")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=2, help="threads for sampling and scoring")
    p.add_argument("--xtb-num", type=int, default=200,
                   help="molecules of each row relaxed with GFN2-xTB, the first of the --num (0: no geometry check)")
    p.add_argument("--no-readme", action="store_true", help="do not touch the README's headline row")
    p.add_argument("--resume-from", metavar="SLIM.ckpt",
                   help="one arm whose folder was lost (another machine): warm-start it from this slim export of it "
                        "(sci-diffusion export), its clock at the CPU-hours the export records")
    args = p.parse_args(argv)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arm {unknown[0]!r}; the arms are {', '.join(ARMS)}.")
    args.marks = sorted(float(m) for m in args.marks.split(","))
    args.steps = [int(s) for s in args.steps.split(",")]
    if max(args.marks) > args.cpu_hours:
        p.error(f"a mark of {max(args.marks)} CPU-hours lies past the budget of {args.cpu_hours}.")
    if args.resume_from:
        args.resume_from = resume_point(p, args)
    return args


def resume_point(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Path, float]:
    """``--resume-from``'s file and the CPU-hours behind it (its export record's ``cpu_hours``)."""
    path = Path(args.resume_from)
    if len(args.arms) != 1:
        p.error("--resume-from continues one arm; name it alone in --arms.")
    if not path.is_file():
        p.error(f"--resume-from {path} is not there.")
    hours = torch.load(path, map_location="cpu", weights_only=False).get("sci_diffusion", {}).get("cpu_hours")
    if hours is None or hours >= args.cpu_hours:
        p.error(f"--resume-from {path} records no CPU-hours below the budget of {args.cpu_hours:g} (export a run with "
                "a CpuTimeBudget).")
    return path, float(hours)


# ----- training ------------------------------------------------------------------------------------------
def checkpoint_folder(work: Path, arm: str) -> Path:
    return work / arm / "checkpoints"


def mark_checkpoint(work: Path, arm: str, mark: float) -> Path:
    return checkpoint_folder(work, arm) / f"cpu_{mark:g}h.ckpt"


def arm_config(arm: Arm, work: Path, hours: float, marks: list[float],
               resume: tuple[Path, float] | None = None) -> Path:
    """The arm's config with the study's budget, marks and folders, written to ``<work>/<arm>/config.yaml``;
    ``resume`` (a slim export and the CPU-hours behind it) warm-starts it from there."""
    cfg = yaml.safe_load((REPO / arm.config).read_text())
    if resume is not None:
        cfg["model"]["init_args"]["init_from"] = str(resume[0].resolve())
        (work / arm.letter / "init_from.ckpt").unlink(missing_ok=True)
    for callback in cfg["trainer"]["callbacks"]:
        if callback["class_path"].endswith("CpuTimeBudget"):
            callback["init_args"].update(hours=hours, save_at=marks)
            if resume is not None:
                callback["init_args"]["spent_hours"] = resume[1]
        if callback["class_path"].endswith("CpuTimeCooldown"):  # to the budget (a branch: from its branch point)
            callback["init_args"].update(end_hours=hours)
            if arm.branch_from is not None:
                callback["init_args"].update(start_hours=arm.branch_from[1])
    init_args = cfg["model"]["init_args"]
    if init_args.get("init_from"):  # a warm start: a copy in the arm's folder, so later legs find the same weights
        kept = work / arm.letter / "init_from.ckpt"
        if not kept.is_file():
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / init_args["init_from"], kept)
        init_args["init_from"] = str(kept)
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["dirpath"] = str(checkpoint_folder(work, arm.letter))
    cfg["trainer"]["logger"]["init_args"].update(save_dir=str(work / arm.letter), name="log")
    out = work / arm.letter / "config.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def training_jobs(args: argparse.Namespace, work: Path) -> list[Job]:
    """One ``sci-diffusion fit`` per arm whose last mark is not saved yet, resumed from its ``last.ckpt`` (a branch's
    first leg: from its parent arm's checkpoint at the branch point)."""
    jobs = []
    for letter in args.arms:
        if mark_checkpoint(work, letter, args.marks[-1]).is_file():
            print(f"  arm {letter}: trained to {args.marks[-1]:g} CPU-hours already")
            continue
        last = checkpoint_folder(work, letter) / "last.ckpt"
        resume = args.resume_from if not last.is_file() else None  # a lost arm's first leg on a new machine
        config = arm_config(ARMS[letter], work, args.cpu_hours, args.marks, resume)
        command = [sys.executable, "-m", "sci_diffusion.cli", "fit", "--config", str(config)]
        branch = ARMS[letter].branch_from
        if not last.is_file() and branch is not None and resume is None:
            last = mark_checkpoint(work, *branch)
            if not last.is_file():
                raise SystemExit(f"Arm {letter} branches from arm {branch[0]} at {branch[1]:g} CPU-hours, and {last} "
                                 f"is not there yet; train arm {branch[0]} to that mark first.")
            if args.cpu_hours <= branch[1]:
                raise SystemExit(f"Arm {letter} branches at {branch[1]:g} CPU-hours; give it a budget past that.")
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


# ----- scoring -------------------------------------------------------------------------------------------
def training_facts(ckpt: Path) -> dict:
    """Step, epoch and CPU-hours spent, read from a Lightning checkpoint."""
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    spent = state.get("callbacks", {}).get("CpuTimeBudget", {}).get("cpu_seconds", float("nan"))
    return {"train_steps": int(state.get("global_step", 0)), "epoch": int(state.get("epoch", 0)),
            "cpu_hours_spent": round(spent / 3600.0, 4)}


def score_checkpoint(ckpt: Path, args: argparse.Namespace, reference: frozenset[str], sampler: str) -> list[dict]:
    """Draw ``args.num`` molecules at each step count (seed 0, the same sizes for every arm) and score them."""
    module = load_module(str(ckpt)).eval()
    bonded = getattr(module, "model_kind", "") == "bonds"
    counts = draw_atom_counts(module.atom_count_histogram, args.num, torch.Generator().manual_seed(0))
    rows = []
    for steps in args.steps:
        generator, molecules = torch.Generator().manual_seed(0), []
        start = time.perf_counter()
        for i in range(0, args.num, args.batch_size):
            molecules += list(draw_molecules(module, counts[i:i + args.batch_size], sampler, steps, generator,
                                             args.batch_size))
        seconds = time.perf_counter() - start
        metrics = evaluate_generated(molecules, reference, train_bond_smiles() if bonded else None)
        geometry = relaxation_summary(molecules, max_molecules=args.xtb_num) if args.xtb_num else {}
        rows.append({"sampler": sampler, "steps": steps, "molecules": len(molecules),
                     **{f"xtb_{k}": geometry.get(k) for k in XTB_FIELDS},
                     "molecules_per_second": round(len(molecules) / seconds, 2),
                     "load_average_1min": round(os.getloadavg()[0], 2),  # mol/s is slower when trainings share the cores
                     **{k: metrics[k] for k in ("atom_stability", "molecule_stability", "validity", "uniqueness",
                                                "validity_x_uniqueness", "novelty")},
                     "generated_bonds": {k: v for k, v in metrics.get("generated_bonds", {}).items() if not k.startswith("n_")}
                     or None})
        print(f"    {steps} steps: {100 * metrics['molecule_stability']:.1f} % stable, "
              f"{100 * metrics['validity']:.1f} % valid, {rows[-1]['molecules_per_second']} mol/s", flush=True)
    return rows


def score(args: argparse.Namespace, work: Path, previous: list[dict]) -> list[dict]:
    """Score every saved mark of the chosen arms; rows of other arms (or marks not saved) are kept from before."""
    torch.set_num_threads(args.threads)
    reference = train_smiles()
    rows = {(r["arm"], r["mark_cpu_hours"], r["steps"]): r for r in previous}
    for letter in args.arms:
        arm = ARMS[letter]
        for mark in args.marks:
            ckpt = mark_checkpoint(work, letter, mark)
            if not ckpt.is_file():
                print(f"  arm {letter}: no checkpoint at {mark:g} CPU-hours yet ({ckpt})")
                continue
            print(f"  arm {letter} at {mark:g} CPU-hours:", flush=True)
            facts = training_facts(ckpt)
            for row in score_checkpoint(ckpt, args, reference, arm.sampler or args.sampler):
                rows[(letter, mark, row["steps"])] = {"arm": letter, "label": arm.label, "config": arm.config,
                                                      "mark_cpu_hours": mark, **facts, **row}
    return sorted(rows.values(), key=lambda r: (r["arm"], r["mark_cpu_hours"], r["steps"]))


# ----- report --------------------------------------------------------------------------------------------
README_ROW = "Recipe study, QM9 (EDM metric, 1,000 molecules per arm, equal CPU time)"
PUBLISHED = "EDM 82.0 % stable (1,000 steps, ~7 GPU-days); MolTD 92.5 % at 12 steps"


def cpu_hours_text(hours: float) -> str:
    return f"{hours:g} CPU-hour{'s' * (hours != 1)}"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def table(rows: list[dict], floor: dict | None) -> str:
    lines = ["| arm | recipe | CPU-hours | training steps | sampler steps | atom % | mol % | valid % | V x U % "
             "| novelty % | mol/s | xTB drop, median / p90 kcal/mol (unscorable %) | own bonds (MiDi): mol % / valid % |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    if floor:
        lines.append(f"| QM9 | real geometries ({floor['source']}) | | | | | | | | | | {geometry_cell(floor)} | |")
    for r in rows:
        lines.append(f"| {r['arm']} | {r['label']} | {r['mark_cpu_hours']:g} | {r['train_steps']:,} | {r['sampler']} "
                     f"{r['steps']} | {pct(r['atom_stability'])} | {pct(r['molecule_stability'])} | {pct(r['validity'])} "
                     f"| {pct(r['validity_x_uniqueness'])} | {pct(r['novelty'])} | {r['molecules_per_second']} "
                     f"| {geometry_cell({k: r.get(f'xtb_{k}') for k in XTB_FIELDS})} "
                     f"| {own_bonds_cell(r.get('generated_bonds'))} |")
    return "\n".join(lines)


def own_bonds_cell(generated: dict | None) -> str:
    """Molecule stability and validity under the model's own bonds (a bond-aware arm), or ``-``."""
    return "-" if not generated else f"{pct(generated['molecule_stability'])} / {pct(generated['validity'])}"


def geometry_cell(summary: dict) -> str:
    """``median / p90 (unscorable %, of n)`` of an xTB summary, or ``-`` when none was run."""
    if not summary.get("molecules"):
        return "-"
    if summary.get("median_drop_kcal_per_mol") is None:
        return f"none scored ({pct(summary['unscorable_fraction'])} % of {summary['molecules']} unscorable)"
    return (f"{summary['median_drop_kcal_per_mol']:.1f} / {summary['p90_drop_kcal_per_mol']:.1f} "
            f"({pct(summary['unscorable_fraction'])} % of {summary['molecules']})")


def leader(rows: list[dict], steps: int, contested: bool = True) -> tuple[dict, dict | None, float] | None:
    """The best and second arm by molecule stability at ``steps``, and the standard error of their difference (two
    independent proportions): at the largest mark where two or more arms were scored (the equal-CPU-time comparison),
    or with ``contested=False`` at the largest mark scored at all (where one arm may have trained on alone)."""
    at = [r for r in rows if r["steps"] == steps]
    counts = {m: sum(r["mark_cpu_hours"] == m for r in at) for m in {r["mark_cpu_hours"] for r in at}}
    marks = [m for m, n in counts.items() if n >= 2 or not contested] or list(counts)
    if not marks:
        return None
    top = max(marks)
    ranked = sorted((r for r in at if r["mark_cpu_hours"] == top), key=lambda r: -r["molecule_stability"])
    if len(ranked) < 2:
        return ranked[0], None, float("nan")
    a, b = ranked[0], ranked[1]
    se = (a["molecule_stability"] * (1 - a["molecule_stability"]) / a["molecules"]
          + b["molecule_stability"] * (1 - b["molecule_stability"]) / b["molecules"]) ** 0.5
    return a, b, se


def verdict(rows: list[dict], steps: int) -> str:
    found = leader(rows, steps)
    if found is None:
        return ""
    a, b, se = found
    head = (f"At {cpu_hours_text(a['mark_cpu_hours'])} and {steps} steps, arm **{a['arm']}** leads with "
            f"{pct(a['molecule_stability'])} %")
    if b is None:
        text = head + " (the only arm scored there)."
    else:
        gap = 100 * (a["molecule_stability"] - b["molecule_stability"])
        behind = sorted({r["arm"] for r in rows} - {r["arm"] for r in rows if r["mark_cpu_hours"] == a["mark_cpu_hours"]})
        missing = f"; arms {', '.join(behind)} are not scored there yet." if behind else "."
        text = (head + f", {gap:.1f} points above arm {b['arm']} ({pct(b['molecule_stability'])} %; standard error of the "
                f"difference {100 * se:.1f} points)" + missing)
    latest = leader(rows, steps, contested=False)[0]
    if latest["mark_cpu_hours"] > a["mark_cpu_hours"]:
        text += (f" Trained on alone, arm {latest['arm']} reaches {pct(latest['molecule_stability'])} % at "
                 f"{cpu_hours_text(latest['mark_cpu_hours'])}.")
    return text


def draw_plot(rows: list[dict], path: Path) -> None:
    import matplotlib  # matplotlib: only when the picture is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, letter in enumerate(sorted({r["arm"] for r in rows})):
        for steps, style in zip(sorted({r["steps"] for r in rows}), ["--", "-", ":"]):
            pts = sorted((r["mark_cpu_hours"], 100 * r["molecule_stability"]) for r in rows
                         if r["arm"] == letter and r["steps"] == steps)
            if pts:
                ax.plot(*zip(*pts), style, marker="o", color=f"C{i}", label=f"{letter}: {ARMS[letter].label} ({steps} steps)")
    ax.set_xlabel("training CPU-hours (one thread)")
    ax.set_ylabel("molecule stability % (EDM metric)")
    ax.set_title("QM9 recipes at equal CPU time")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(rows: list[dict], floor: dict | None, args: argparse.Namespace, work: Path,
           provenance: dict | None = None) -> None:
    saved = RESULTS / f"{RESULT_NAME}.json"  # legs trained on an earlier machine stay recorded
    legs = json.loads(saved.read_text()).get("legs", {}) if saved.is_file() else {}
    legs |= {a: json.loads((work / a / "legs.json").read_text()) for a in ARMS if (work / a / "legs.json").is_file()}
    draw_plot(rows, PLOT)
    markdown = "\n\n".join([table(rows, floor), verdict(rows, 50), verdict(rows, 20),
                              f"![molecule stability against CPU-hours]({PLOT.name})"])
    write_result(RESULT_NAME, {"rows": rows, "xtb_floor": floor, "legs": legs, "num": args.num, "steps": args.steps,
                               "marks": args.marks}, markdown, update_page=not args.no_readme, provenance=provenance)
    from_scratch = [r for r in rows if ARMS[r["arm"]].from_scratch]  # the equal-time race of the study
    found = leader(from_scratch, 50)
    if found and not args.no_readme:
        a, b, _ = found
        latest = leader(rows, 50, contested=False)[0]
        scored = ", ".join(sorted({r["arm"] for r in from_scratch if r["mark_cpu_hours"] == a["mark_cpu_hours"]}))
        compared = (f"from scratch, best of arms {scored} at {cpu_hours_text(a['mark_cpu_hours'])}: {a['arm']} "
                    f"({a['label']}), {pct(a['molecule_stability'])} % stable" +
                    ("" if b is None else f" (next: {b['arm']}, {pct(b['molecule_stability'])} %)"))
        budget = f"{a['mark_cpu_hours']:g} CPU-hour per arm"
        if latest["mark_cpu_hours"] > a["mark_cpu_hours"]:
            beside = sorted((r for r in rows if r["steps"] == 50 and r["mark_cpu_hours"] == latest["mark_cpu_hours"]
                             and r["arm"] != latest["arm"]), key=lambda r: -r["molecule_stability"])
            others = ", ".join(f"{r['arm']} {pct(r['molecule_stability'])} %" for r in beside)
            compared += (f"; at {cpu_hours_text(latest['mark_cpu_hours'])}, {latest['arm']} ({latest['label']})"
                         + (f" beside {others}" if others else ""))
            budget += f"; {latest['arm']} {latest['mark_cpu_hours']:g} CPU-hours"
        replace_readme_row(README_ROW, f"| {README_ROW} | {compared}: {pct(latest['molecule_stability'])} % stable, "
                           f"{pct(latest['validity'])} % valid, 50 steps | {PUBLISHED} | {budget}, one thread "
                           "| [molecules_recipes](docs/results/molecules_recipes.md) |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.phase in ("train", "both"):
        train(args, work)
    if args.phase == "report":
        saved, provenance = saved_result(RESULT_NAME)
        report(saved["rows"], saved.get("xtb_floor"), args, work, provenance)
    if args.phase in ("score", "both"):
        previous_file = RESULTS / f"{RESULT_NAME}.json"
        previous = json.loads(previous_file.read_text()) if previous_file.is_file() else {}
        floor = previous.get("xtb_floor")
        if args.xtb_num and (floor is None or floor["molecules"] != args.xtb_num):
            floor = qm9_relaxation_floor(args.xtb_num)  # real QM9 geometries: the floor of the geometry check
        report(score(args, work, previous.get("rows", [])), floor, args, work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
