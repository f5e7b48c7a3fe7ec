"""Does the 3-D latent generator's synthetic data help downstream models? The utility study of issue 31 §2.

The field's protocol (MAISI, Med-DDPM) at CPU scale, on phantom v2 heads at 4 mm:

- a pool of ``--pool-subjects`` real heads (seed 0, ids 1BA...) and ``--test-subjects`` held-out real heads (seed
  1000, ids 1BT...) that no generator and no downstream model ever trains on;
- for each seed s in ``--seeds`` and n in ``--n-real``: the real subjects are the first n of the pool shuffled with
  seed s (so the draws are nested: n = 2 is inside n = 5 is inside n = 10); a generator trained on those n subjects
  only, in three stages each with its own CPU-hour budget (``CpuTimeBudget``, one thread): the labels autoencoder
  (configs/medical/volume_autoencoder_labels.yaml), the images autoencoder (volume_autoencoder_images.yaml) and the
  two latent U-Nets (latent_synthesis.yaml); ``--synthetic`` subjects drawn from it (``synthesize medical``);
- two downstream tasks, each trained for ``--downstream-cpu-hours`` (seed s) in three arms: the n real subjects
  (*real*), them plus the synthetic ones (*real+synthetic*), the synthetic ones alone (*synthetic*):
  tissue segmentation from MR (configs/medical/tissue_segmentation.yaml: a 3-D MONAI UNet, DiceCE; MONAI's
  DiceMetric per tissue and the mean over tissues) and MR-to-CT (configs/medical/mri2ct_regression.yaml, as
  benchmarks/augmentation_utility.py trains it, at 4 mm; MAE in HU inside the body mask);
- every downstream model scored on every held-out subject; the report gives each cell's mean with a 95 % bootstrap
  interval over seeds and test subjects (both resampled), and each comparison of arms a paired difference (paired
  by seed and test subject) with its interval and a one-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon).

Targets (printed met / not met / not measured): real+synthetic beats real on mean Dice at n_real = 2 and 5 by >= 3
points, its interval excluding 0 and the paired test p < 0.05; synthetic only reaches >= 80 % of real-only mean
Dice at n_real = 10; MR-to-CT MAE not worse with synthetic data at any n_real (the difference's interval reaches 0
or below and the paired test for "worse" gives p >= 0.05).

Phases (``--phase generators|synthesize|downstream|report|all``) run units: one generator stage, one synthetic set,
one downstream training with its evaluation. Each unit writes ``<work-dir>/units/<unit>.json`` when it is done and
is skipped when that file exists, so a run killed mid-way goes on where it stopped (a stage killed mid-training
resumes from its last.ckpt). ``--jobs`` units run at once, one thread each; no unit starts after
``--budget-minutes``. The report phase writes benchmarks/results/<--result-name>.json, its block of
docs/results/medical_synthetic_utility.md and its README row (not with ``--no-readme``).

The real study (3 seeds x n_real 2, 5, 10 = 9 generators, 54 downstream models, 12 test subjects) on this 2-core
machine at ``--jobs 2``, from the smoke run's overheads (each fit about 15 CPU-s to start; segmenting a test head
about 2.5 CPU-s, translating one 0.5): generators 9 x (0.5 CPU-h + about 0.03 starting and encoding) = 4.8 CPU-h,
synthesis about 9 x (10 subjects x 12 s + start) = 0.35 CPU-h, downstream 54 x (0.05 CPU-h + about 35 CPU-s of start
and evaluation) = 3.2 CPU-h: about 8.3 CPU-hours, 4.2 hours of wall time on 2 free cores. It runs in sessions: the
same command again goes on from the units already done (``--budget-minutes`` stops it cleanly between units).
Scaling: each 0.1 CPU-h more per generator adds 0.9 CPU-h to the study, each 0.01 CPU-h more per downstream
model 0.54. At 0.5 CPU-h a generator gets about a quarter of the bundled one's 1.9 CPU-h (on 38 heads).

    python benchmarks/medical_synthetic_utility.py --work-dir /work/utility31 --phase all \\
        --generator-cpu-hours 0.15,0.15,0.2 --downstream-cpu-hours 0.05 --jobs 2 --budget-minutes 240
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from augmentation_utility import ARMS, global_step, last_checkpoint, link_subjects, subject_folders  # noqa: E402
from jobs import Job, run_jobs  # noqa: E402

NAME = "medical_synthetic_utility"
README_CELL = "Synthetic data for downstream models (issue 31 §2: segmentation and MR-to-CT, 3-D latent generator)"
CONFIGS = REPO / "configs" / "medical"
STAGES = {"labels": CONFIGS / "volume_autoencoder_labels.yaml", "images": CONFIGS / "volume_autoencoder_images.yaml",
          "latent": CONFIGS / "latent_synthesis.yaml"}
TASKS = {"segmentation": CONFIGS / "tissue_segmentation.yaml", "mri2ct": CONFIGS / "mri2ct_regression.yaml"}
PHASES = ("generators", "synthesize", "downstream", "report", "all")
SPACING_MM = 4.0
POOL_SEED, TEST_SEED = 0, 1000
POOL_CENTRE, TEST_CENTRE = "A", "T"  # SynthRAD ids 1BA001.. (pool) and 1BT001.. (held-out test heads)
DICE_GAIN_POINTS, SYNTHETIC_SHARE, ALPHA = 3.0, 0.8, 0.05


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one sentence on stderr and exit 2 (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message.rstrip('.')}.\n")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/medical_synthetic_utility"))
    p.add_argument("--phase", choices=PHASES, default="all")
    p.add_argument("--n-real", default="2,5,10", help="comma-separated real-subject counts")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (real-subject draw, generator, synthesis "
                                                    "and downstream training)")
    p.add_argument("--pool-subjects", type=int, default=20, help="real heads the draws come from")
    p.add_argument("--test-subjects", type=int, default=12, help="held-out real heads (the issue asks >= 12)")
    p.add_argument("--synthetic", type=int, default=10, help="synthetic subjects per generator")
    p.add_argument("--generator-cpu-hours", default="0.15,0.15,0.2",
                   help="CPU-hours of each generator stage: one value for all three, or labels,images,latent")
    p.add_argument("--downstream-cpu-hours", type=float, default=0.05, help="CPU-hours of each downstream model")
    p.add_argument("--steps", type=int, default=50, help="sampler steps of synthesize medical")
    p.add_argument("--sampler", default="ddpm", help="sampler of synthesize medical")
    p.add_argument("--jobs", type=int, default=2, help="units at once (one thread each)")
    p.add_argument("--budget-minutes", type=float, default=None, help="no unit starts after this many minutes")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of each interval")
    p.add_argument("--result-name", default=NAME, help="the result's name: benchmarks/results/<name>.json")
    p.add_argument("--json", type=Path, help="the result JSON (default benchmarks/results/<--result-name>.json)")
    p.add_argument("--no-readme", action="store_true", help="write the JSON only: no study page, no README row")
    p.add_argument("--unit", help=argparse.SUPPRESS)  # internal: run one planned unit of --work-dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, checked: a bad one is one sentence and exit 2."""
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        args.n_real = positive_ints(args.n_real, "--n-real")
        args.seeds = sorted({int(v) for v in args.seeds.split(",") if v.strip()})
        hours = [float(v) for v in args.generator_cpu_hours.split(",") if v.strip()]
    except ValueError:
        p.error("--n-real, --seeds and --generator-cpu-hours take comma-separated numbers")
    if len(hours) not in (1, 3) or not all(h > 0 for h in hours):
        p.error("--generator-cpu-hours takes one positive value or three (labels,images,latent)")
    args.generator_cpu_hours = dict(zip(STAGES, hours * 3 if len(hours) == 1 else hours))
    problem = flag_problem(args)
    if problem:
        p.error(problem)
    return args


def positive_ints(text: str, flag: str) -> list[int]:
    values = sorted({int(v) for v in text.split(",") if v.strip()})
    if not values or values[0] < 1:
        raise ValueError(flag)
    return values


def flag_problem(args: argparse.Namespace) -> str | None:
    """The first thing wrong with the numeric flags, as a sentence; None when all are usable."""
    checks = [(not args.seeds, "--seeds needs at least one seed"),
              (args.pool_subjects < max(args.n_real), f"--pool-subjects ({args.pool_subjects}) must be at least the "
                                                      f"largest --n-real ({max(args.n_real)})"),
              (args.test_subjects < 1, "--test-subjects must be at least 1"),
              (args.synthetic < 1, "--synthetic must be at least 1"),
              (not args.downstream_cpu_hours > 0, "--downstream-cpu-hours must be positive"),
              (args.steps < 1, "--steps must be at least 1"), (args.jobs < 1, "--jobs must be at least 1"),
              (args.budget_minutes is not None and not args.budget_minutes > 0, "--budget-minutes must be positive"),
              (args.bootstrap < 100, "--bootstrap must be at least 100 resamples")]
    return next((message for bad, message in checks if bad), None)


# ----- the plan: which subjects each unit sees -----------------------------------------------------------------
@dataclass
class Unit:
    """One resumable piece of the study: a command (a fit or a synthesis), what it waits for, and what it is."""

    name: str
    kind: str  # "generator", "synthesize" or "downstream"
    command: list[str]
    after: list[str] = field(default_factory=list)
    checkpoint_flags: dict[str, str] = field(default_factory=dict)  # flag -> unit whose checkpoint it takes
    link: list[str] = field(default_factory=list)  # folders linked into ``root`` before the command runs
    root: str = ""  # the folder the command trains on (a generator or downstream fit) or writes (a synthesis)
    info: dict[str, Any] = field(default_factory=dict)


def draw_real(pool_ids: list[str], n: int, seed: int) -> list[str]:
    """The n real training subjects of ``seed``: the first n of the pool shuffled with ``seed`` (nested in n)."""
    order = np.random.default_rng(seed).permutation(sorted(pool_ids))
    return sorted(str(i) for i in order[:n])


def fit_command(config: Path, root: Path, work: Path, name: str, hours: float, seed: int, extra: list[str]) -> list[str]:
    """``sci-diffusion fit`` of ``config`` on ``root`` alone (no validation split) for ``hours`` CPU-hours: the
    config's callbacks are replaced by ``CpuTimeBudget`` and a ``ModelCheckpoint`` that keeps last.ckpt."""
    callbacks = [{"class_path": "sci_diffusion.callbacks.CpuTimeBudget", "init_args": {"hours": hours}},
                 {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}}]
    return [sys.executable, "-m", "sci_diffusion.cli", "fit", "--config", str(config), f"--data.root={root}",
            "--data.val_subjects=0", "--trainer.max_epochs=-1", f"--seed_everything={seed}",
            f"--trainer.callbacks={json.dumps(callbacks)}", f"--trainer.logger.init_args.save_dir={work / 'runs'}",
            f"--trainer.logger.init_args.name={name}", *extra]


def generator_units(args: argparse.Namespace, work: Path, n: int, seed: int, real: Path) -> list[Unit]:
    """The three stages of one arm's generator, each trained on that arm's real subjects only, and its synthesis."""
    cell, units = f"n{n}_s{seed}", []
    for stage, config in STAGES.items():
        name = f"gen_{cell}_{stage}"
        flags = ({"--model.init_args.label_autoencoder": f"gen_{cell}_labels",
                  "--model.init_args.image_autoencoder": f"gen_{cell}_images"} if stage == "latent" else {})
        units.append(Unit(name, "generator", fit_command(config, real, work, name, args.generator_cpu_hours[stage], seed,
                                                         []), after=list(flags.values()), checkpoint_flags=flags,
                          root=str(real), info={"n_real": n, "seed": seed, "stage": stage}))
    synthesis = [sys.executable, "-m", "sci_diffusion.cli", "synthesize", "medical", "--num", str(args.synthetic),
                 "--out", str(work / cell / "synthetic"), "--seed", str(seed), "--steps", str(args.steps),
                 "--sampler", args.sampler]
    units.append(Unit(f"synth_{cell}", "synthesize", synthesis, after=[f"gen_{cell}_latent"],
                      checkpoint_flags={"--ckpt": f"gen_{cell}_latent"}, root=str(work / cell / "synthetic"),
                      info={"n_real": n, "seed": seed}))
    return units


def downstream_units(args: argparse.Namespace, work: Path, n: int, seed: int, real: Path) -> list[Unit]:
    """Each task in each arm of one (n_real, seed) cell: real, real + synthetic (linked when it starts), synthetic."""
    cell, units = f"n{n}_s{seed}", []
    roots = {"real": real, "real+synthetic": work / cell / "real+synthetic", "synthetic": work / cell / "synthetic"}
    for task, config in TASKS.items():
        extra = [f"--data.spacing_mm={SPACING_MM}"] if task == "mri2ct" else []
        for arm, root in roots.items():
            name = f"{task}_{cell}_{arm.replace('+', '_')}"
            units.append(Unit(name, "downstream", fit_command(config, root, work, name, args.downstream_cpu_hours, seed,
                                                              extra),
                              after=[] if arm == "real" else [f"synth_{cell}"], root=str(root),
                              link=[str(real), str(roots["synthetic"])] if arm == "real+synthetic" else [],
                              info={"task": task, "n_real": n, "seed": seed, "arm": arm}))
    return units


def plan_units(args: argparse.Namespace, work: Path, pool_dir: Path, test_dir: Path) -> dict[str, Unit]:
    """Every unit of the study by name; each cell's real folder (hard links of its drawn subjects) made here."""
    pool_ids = [f.name for f in subject_folders(pool_dir)]
    units: list[Unit] = []
    for seed in args.seeds:
        for n in args.n_real:
            real = link_subjects([pool_dir / i for i in draw_real(pool_ids, n, seed)], work / f"n{n}_s{seed}" / "real")
            units += generator_units(args, work, n, seed, real) + downstream_units(args, work, n, seed, real)
    for unit in units:
        unit.info["test_dir"] = str(test_dir)
    return {u.name: u for u in units}


def phase_of(unit: Unit) -> str:
    return {"generator": "generators", "synthesize": "synthesize", "downstream": "downstream"}[unit.kind]


# ----- running the units -----------------------------------------------------------------------------------
def unit_result(work: Path, name: str) -> Path:
    return work / "units" / f"{name}.json"


def select_units(units: dict[str, Unit], work: Path, phase: str) -> tuple[list[Unit], list[str]]:
    """``(to run, left waiting)``: the units of ``phase`` not done yet, in plan order, whose prerequisites are done
    or run too; the others of the phase wait for an earlier phase (their names)."""
    chosen, waiting = [], []
    for unit in units.values():
        if unit_result(work, unit.name).is_file() or (phase != "all" and phase_of(unit) != phase):
            continue
        ready = all(unit_result(work, a).is_file() or a in {c.name for c in chosen} for a in unit.after)
        (chosen if ready else waiting).append(unit if ready else unit.name)
    return chosen, waiting


def run_units(units: list[Unit], work: Path, args: argparse.Namespace, deadline: float | None) -> None:
    """Run ``units`` through ``jobs.run_jobs`` (``--jobs`` at a time, one thread each), each as this script's
    ``--unit`` (which writes the unit's JSON and refuses to start after ``deadline``)."""
    from sci_diffusion.atomic import write_json  # the package (and torch) load after the flags are checked

    (work / "logs").mkdir(parents=True, exist_ok=True)
    write_json(work / "plan.json", {"deadline": deadline, "units": {u.name: asdict(u) for u in units}})
    names = {u.name for u in units}
    jobs = [Job(u.name, [sys.executable, str(Path(__file__).resolve()), "--work-dir", str(work), "--unit", u.name],
                after=[a for a in u.after if a in names]) for u in units]
    run_jobs(jobs, work / "logs", args.jobs)


def resolved_command(unit: Unit, work: Path) -> list[str]:
    """The unit's command with each ``checkpoint_flags`` flag given the checkpoint its unit recorded, and a fit that
    was killed mid-way resumed from its newest last.ckpt (``--ckpt_path last``)."""
    command = list(unit.command)
    for flag, source in unit.checkpoint_flags.items():
        command.append(f"{flag}={json.loads(unit_result(work, source).read_text())['checkpoint']}")
    if "fit" in command and any((work / "runs" / unit.name).rglob("last*.ckpt")):
        command.append("--ckpt_path=last")
    return command


def run_unit(work: Path, name: str) -> int:
    """Run one planned unit (``plan.json``) and write its JSON; nothing when it is done already or the deadline
    has passed (the whole invocation's ``--budget-minutes``)."""
    from sci_diffusion.atomic import write_json  # the package (and torch) load after the flags are checked

    plan = json.loads((work / "plan.json").read_text())
    unit = Unit(**plan["units"][name])
    if unit_result(work, name).is_file():
        print(f"{name}: done already", flush=True)
        return 0
    if plan["deadline"] is not None and time.time() > plan["deadline"]:
        print(f"{name}: not started, --budget-minutes spent", flush=True)
        return 0
    missing = [a for a in unit.after if not unit_result(work, a).is_file()]
    if missing:
        print(f"{name}: not started, waiting for {', '.join(missing)}", flush=True)
        return 0
    if unit.link:
        link_subjects([f for folder in unit.link for f in subject_folders(Path(folder))], Path(unit.root))
    start = time.time()
    subprocess.run(resolved_command(unit, work), check=True)
    record = {**unit.info, "unit": name, "kind": unit.kind, "subjects": subject_ids(Path(unit.root))}
    if unit.kind in ("generator", "downstream"):
        ckpt = last_checkpoint(work, name)
        record.update(checkpoint=str(ckpt), global_step=global_step(ckpt))
    if unit.kind == "downstream":
        record["rows"] = evaluate_unit(unit, Path(record["checkpoint"]), work)
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    record.update(wall_seconds=round(time.time() - start, 1),
                  cpu_seconds=round(sum(u.ru_utime + u.ru_stime for u in usage), 1))
    write_json(unit_result(work, name), json.loads(json.dumps(record, default=float)))
    return 0


def subject_ids(folder: Path) -> list[str]:
    """The subjects of a unit's folder: what a fit trained on, what a synthesis wrote."""
    return [f.name for f in subject_folders(folder)] if folder.is_dir() else []


# ----- the downstream evaluation ----------------------------------------------------------------------------
def evaluate_unit(unit: Unit, ckpt: Path, work: Path) -> list[dict[str, Any]]:
    """One row per held-out test subject: Dice per tissue and their mean (segmentation) or MAE in HU (MR-to-CT)."""
    test_dir = Path(unit.info["test_dir"])
    if unit.info["task"] == "segmentation":
        return segmentation_rows(ckpt, test_dir)
    from augmentation_utility import score_translations

    report = score_translations(ckpt, test_dir, work / "predictions" / unit.name)
    return [{"subject": pid, "mae_hu": float(m["mae"])} for pid, m in sorted(report["patients"].items())]


def segmentation_rows(ckpt: Path, test_dir: Path) -> list[dict[str, Any]]:
    """Segment each test subject's MR at 4 mm with the model of ``ckpt``; MONAI Dice per tissue against its labels."""
    import torch  # the torch, MONAI and domain stack load only in the units that evaluate
    from augmentation_utility import load_at_model_grid

    from sci_diffusion.checkpoints import load_module
    from sci_diffusion_medical.data.phantom_v2 import TISSUE_LABELS_V2
    from sci_diffusion_medical.models.tissue_segmentation import dice_per_tissue

    model = load_module(ckpt, domain="medical")
    classes = int(model.hparams.classes)
    rows = []
    for folder in subject_folders(test_dir):
        subject = load_at_model_grid(folder)
        predicted = model.segment(torch.from_numpy(subject["mr"])[None, None])[0]
        scores = dice_per_tissue(predicted, torch.from_numpy(subject["labels"]), classes)
        rows.append({"subject": folder.name, "mean_dice": float(np.nanmean(scores)),
                     "dice": {TISSUE_LABELS_V2.get(k, str(k)): None if math.isnan(v) else float(v)
                              for k, v in enumerate(scores, start=1)}})
    return rows


# ----- statistics ------------------------------------------------------------------------------------------
def crossed_bootstrap(arrays: list[np.ndarray], statistic, resamples: int, seed: int = 0,
                      level: float = 0.95) -> list[float]:
    """Percentile interval of ``statistic(*arrays)`` under a two-way bootstrap: the rows (seeds) and the columns
    (test subjects) of the ``(S, J)`` arrays resampled with replacement, independently, the same draws for every
    array (so paired arrays stay paired). scipy.stats.bootstrap resamples one axis only; a crossed design, where a
    test subject's difficulty is shared by every seed, needs both."""
    rng = np.random.default_rng(seed)
    s, j = arrays[0].shape
    values = np.empty(resamples)
    for b in range(resamples):
        rows, cols = rng.integers(0, s, s), rng.integers(0, j, j)
        values[b] = statistic(*(a[np.ix_(rows, cols)] for a in arrays))
    tail = 100 * (1 - level) / 2
    return [float(np.nanpercentile(values, tail)), float(np.nanpercentile(values, 100 - tail))]


def paired_test(a: np.ndarray, b: np.ndarray, alternative: str) -> float:
    """One-sided Wilcoxon signed-rank p-value of ``a - b`` (``alternative`` "greater" or "less"), paired by seed and
    test subject (pairs with a NaN dropped); 1.0 when every difference is 0."""
    from scipy.stats import wilcoxon  # scipy only where the report is computed

    d = (np.asarray(a, float) - np.asarray(b, float)).ravel()
    d = d[np.isfinite(d)]
    if d.size == 0 or not np.any(d != 0):
        return 1.0
    return float(wilcoxon(d, alternative=alternative).pvalue)


def compare(a: np.ndarray, b: np.ndarray, resamples: int, scale: float = 1.0) -> dict[str, Any]:
    """The paired difference ``mean(a - b) * scale`` of two ``(S, J)`` arrays (seeds x test subjects) with its
    crossed-bootstrap interval and the one-sided paired tests both ways (``p_greater``: a > b; ``p_less``: a < b)."""
    def mean_difference(x, y):
        return float(np.nanmean(x - y)) * scale

    return {"difference": mean_difference(a, b), "interval95": crossed_bootstrap([a, b], mean_difference, resamples),
            "p_greater": paired_test(a, b, "greater"), "p_less": paired_test(a, b, "less"),
            "pairs": int(np.isfinite(a - b).sum())}


def share(a: np.ndarray, b: np.ndarray, resamples: int) -> dict[str, Any]:
    """``mean(a) / mean(b)`` with its crossed-bootstrap interval."""
    def ratio(x, y):
        return float(np.nanmean(x) / np.nanmean(y))

    return {"ratio": ratio(a, b), "interval95": crossed_bootstrap([a, b], ratio, resamples)}


# ----- the report ------------------------------------------------------------------------------------------
METRICS = {"segmentation": "mean_dice", "mri2ct": "mae_hu"}


def downstream_results(work: Path, units: dict[str, Unit]) -> list[dict[str, Any]]:
    """The JSON of every finished downstream unit of the plan."""
    return [json.loads(unit_result(work, u.name).read_text()) for u in units.values()
            if u.kind == "downstream" and unit_result(work, u.name).is_file()]


def matrix(results: list[dict], task: str, n: int, arm: str, seeds: list[int], subjects: list[str]) -> np.ndarray:
    """``(len(seeds), len(subjects))`` of the task's metric (mean Dice in [0, 1], or MAE in HU); NaN where a unit is
    not done."""
    out = np.full((len(seeds), len(subjects)), np.nan)
    for r in results:
        if (r["task"], r["n_real"], r["arm"]) == (task, n, arm) and r["seed"] in seeds:
            for row in r["rows"]:
                if row["subject"] in subjects:
                    out[seeds.index(r["seed"]), subjects.index(row["subject"])] = row[METRICS[task]]
    return out


def done_rows(*arrays: np.ndarray) -> list[np.ndarray]:
    """The arrays restricted to the seeds (rows) measured in all of them."""
    keep = np.all([np.isfinite(a).all(axis=1) for a in arrays], axis=0)
    return [a[keep] for a in arrays]


def summarise(results: list[dict], args: argparse.Namespace, subjects: list[str]) -> tuple[dict, dict]:
    """``(cells, comparisons)``: each (task, n_real, arm)'s mean with its interval, and each task and n_real's
    real+synthetic and synthetic arms against real, paired (``compare``; Dice differences in points)."""
    cells: dict[str, Any] = {}
    comparisons: dict[str, Any] = {}
    for task in TASKS:
        scale = 100.0 if task == "segmentation" else 1.0
        for n in args.n_real:
            m = {arm: matrix(results, task, n, arm, args.seeds, subjects) for arm in ARMS}
            for arm, values in m.items():
                (v,) = done_rows(values)
                if v.size:
                    cells[f"{task}/n{n}/{arm}"] = {"mean": float(v.mean()), "seeds": int(len(v)),
                                                   "interval95": crossed_bootstrap([v], np.mean, args.bootstrap)}
            for arm in ("real+synthetic", "synthetic"):
                a, b = done_rows(m[arm], m["real"])
                if a.size:
                    comparisons[f"{task}/n{n}/{arm} - real"] = {**compare(a, b, args.bootstrap, scale),
                                                                "seeds": int(len(a))}
                    if task == "segmentation":
                        comparisons[f"{task}/n{n}/{arm} - real"]["share_of_real"] = share(a, b, args.bootstrap)
    return cells, comparisons


def targets(comparisons: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's targets, each ``{"target", "value", "interval95", "p_value", "met"}``; ``met`` None (not measured)
    when its comparison is missing."""
    out = {}
    for n in (2, 5):
        c = comparisons.get(f"segmentation/n{n}/real+synthetic - real")
        out[f"dice_gain_n{n}"] = {
            "target": f"real+synthetic beats real on mean Dice at n_real = {n} by >= {DICE_GAIN_POINTS:g} points, "
                      f"interval excluding 0, paired test p < {ALPHA:g}", "unit": "Dice points",
            **({"value": c["difference"], "interval95": c["interval95"], "p_value": c["p_greater"],
                "met": bool(c["difference"] >= DICE_GAIN_POINTS and c["interval95"][0] > 0 and c["p_greater"] < ALPHA)}
               if c else {"met": None})}
    c = comparisons.get("segmentation/n10/synthetic - real")
    out["synthetic_share_n10"] = {
        "target": f"synthetic only reaches >= {100 * SYNTHETIC_SHARE:.0f} % of real-only mean Dice at n_real = 10",
        "unit": "share of real-only Dice",
        **({"value": c["share_of_real"]["ratio"], "interval95": c["share_of_real"]["interval95"],
            "met": bool(c["share_of_real"]["ratio"] >= SYNTHETIC_SHARE)} if c else {"met": None})}
    for n in (2, 5, 10):
        c = comparisons.get(f"mri2ct/n{n}/real+synthetic - real")
        out[f"mri2ct_not_worse_n{n}"] = {
            "target": f"MR-to-CT MAE not worse with synthetic data at n_real = {n} (interval of the difference reaches "
                      f"0 or below, paired test for worse p >= {ALPHA:g})", "unit": "HU",
            **({"value": c["difference"], "interval95": c["interval95"], "p_value": c["p_greater"],
                "met": bool(c["interval95"][0] <= 0 and c["p_greater"] >= ALPHA)} if c else {"met": None})}
    return out


def verdict(met: bool | None) -> str:
    return "not measured" if met is None else ("met" if met else "not met")


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def interval_text(interval: list[float] | None, spec: str = ".1f") -> str:
    return "-" if not interval else f"[{fmt(interval[0], spec)}, {fmt(interval[1], spec)}]"


def per_tissue(results: list[dict], n: int, arm: str) -> dict[str, float]:
    """Mean Dice of each tissue over the segmentation arm's seeds and test subjects (tissues present there)."""
    values: dict[str, list[float]] = {}
    for r in results:
        if (r["task"], r["n_real"], r["arm"]) == ("segmentation", n, arm):
            for row in r["rows"]:
                for tissue, v in row["dice"].items():
                    if v is not None:
                        values.setdefault(tissue, []).append(v)
    return {t: float(np.mean(v)) for t, v in values.items()}


SMALLER_THAN_ASKED = "; fewer seeds, test heads or n_real than the issue asks (not its protocol)"


def markdown(report: dict[str, Any]) -> str:
    """The study page's block: targets, each cell, each comparison, Dice per tissue, budgets."""
    lines = [f"**Targets met: {report['targets_met']}.**", "", "| target | value | 95 % interval | p | verdict |",
             "|---|---:|---:|---:|:---:|"]
    for t in report["targets"].values():
        lines.append(f"| {t['target']} | {fmt(t.get('value'), '.2f')} {t['unit']} | {interval_text(t.get('interval95'), '.2f')} "
                     f"| {fmt(t.get('p_value'), '.3g')} | {verdict(t['met'])} |")
    lines += ["", "| task | n_real | arm | mean (Dice, or MAE HU) | 95 % interval | seeds |", "|---|---:|---|---:|---:|---:|"]
    for key, c in report["cells"].items():
        task, n, arm = key.split("/")
        spec = ".3f" if task == "segmentation" else ".1f"
        lines.append(f"| {task} | {n[1:]} | {arm} | {fmt(c['mean'], spec)} | {interval_text(c['interval95'], spec)} | "
                     f"{c['seeds']} |")
    lines += ["", "| comparison (paired by seed and test subject) | difference (Dice points, or HU) | 95 % interval | "
              "p (greater) | p (less) | pairs |", "|---|---:|---:|---:|---:|---:|"]
    for key, c in report["comparisons"].items():
        lines.append(f"| {key} | {fmt(c['difference'], '.2f')} | {interval_text(c['interval95'], '.2f')} | "
                     f"{fmt(c['p_greater'], '.3g')} | {fmt(c['p_less'], '.3g')} | {c['pairs']} |")
    tissues = report["dice_per_tissue"]
    if tissues:
        columns = list(tissues)
        names = sorted({t for v in tissues.values() for t in v})
        lines += ["", "| tissue (mean Dice) | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
        lines += [f"| {t} | " + " | ".join(fmt(tissues[c].get(t), ".3f") for c in columns) + " |" for t in names]
    s = report["settings"]
    lines += ["", f"Phantom v2 heads at {SPACING_MM:g} mm: {s['test_subjects']} held-out test heads (seed {TEST_SEED}), "
                  f"real subjects drawn from a pool of {s['pool_subjects']} (seed {POOL_SEED}); seeds {s['seeds']}; "
                  f"{s['synthetic']} synthetic subjects per generator ({s['sampler']}, {s['steps']} steps). Budgets, one "
                  f"thread each: generator stages {s['generator_cpu_hours']} CPU-hours, each downstream model "
                  f"{s['downstream_cpu_hours']:g} CPU-hours. Units done: {report['units_done']} of {report['units_planned']}"
                  f"{'' if report['protocol']['as_the_issue_asks'] else SMALLER_THAN_ASKED}."]
    return "\n".join(lines)


def readme_row(report: dict[str, Any]) -> str:
    """The README's results row of a report: targets met, mean Dice and MAE per arm at each n_real."""
    def cell_means(task: str, spec: str) -> str:
        parts = []
        for n in report["settings"]["n_real"]:
            means = [report["cells"].get(f"{task}/n{n}/{arm}", {}).get("mean") for arm in ARMS]
            parts.append(f"n {n}: " + " / ".join(fmt(m, spec) for m in means))
        return "; ".join(parts)

    s = report["settings"]
    ours = (f"**{report['targets_met']} targets met**; mean Dice real / real+synthetic / synthetic "
            f"{cell_means('segmentation', '.3f')}; MR-to-CT MAE (HU) {cell_means('mri2ct', '.0f')} "
            f"({len(s['seeds'])} seeds x {s['test_subjects']} held-out heads)")
    budget = (f"each generator {sum(s['generator_cpu_hours'].values()):g} CPU-h (labels / images / latent "
              f"{' / '.join(f'{h:g}' for h in s['generator_cpu_hours'].values())}), each downstream model "
              f"{s['downstream_cpu_hours']:g} CPU-h, one thread")
    published = "MAISI: downstream Dice gains of several points; Med-DDPM: real 0.653 -> real + synthetic 0.668 Dice"
    return f"| {README_CELL} | {ours} | {published} | {budget} | [{NAME}](docs/results/{NAME}.md) |"


def stage_records(work: Path, units: dict[str, Unit], kind: str) -> list[dict[str, Any]]:
    """What the finished generator stages or syntheses recorded: cell, steps, CPU seconds (without checkpoint paths)."""
    keep = ("n_real", "seed", "stage", "global_step", "cpu_seconds", "wall_seconds", "subjects")
    return [{k: v for k, v in json.loads(unit_result(work, u.name).read_text()).items() if k in keep}
            for u in units.values() if u.kind == kind and unit_result(work, u.name).is_file()]


def build_report(args: argparse.Namespace, work: Path, units: dict[str, Unit], test_dir: Path) -> dict[str, Any]:
    """Everything the result JSON holds (command and machine are added by ``reporting.write_result``)."""
    subjects = [f.name for f in subject_folders(test_dir)]
    results = downstream_results(work, units)
    cells, comparisons = summarise(results, args, subjects)
    goals = targets(comparisons)
    measured = [t for t in goals.values() if t["met"] is not None]
    rows = [{k: r[k] for k in ("task", "n_real", "seed", "arm")} | {"training_subjects": len(r["subjects"])} | row
            for r in results for row in r["rows"]]
    done = sum(unit_result(work, name).is_file() for name in units)
    return {
        "settings": {"n_real": args.n_real, "seeds": args.seeds, "pool_subjects": args.pool_subjects,
                     "test_subjects": len(subjects), "synthetic": args.synthetic,
                     "generator_cpu_hours": args.generator_cpu_hours, "downstream_cpu_hours": args.downstream_cpu_hours,
                     "steps": args.steps, "sampler": args.sampler, "bootstrap": args.bootstrap,
                     "spacing_mm": SPACING_MM, "work_dir": str(work)},
        "protocol": {"as_the_issue_asks": len(args.seeds) >= 3 and len(subjects) >= 12 and {2, 5, 10} <= set(args.n_real),
                     "test_subjects": subjects, "interval": "95 % percentile bootstrap over seeds and test subjects",
                     "paired_test": "one-sided Wilcoxon signed-rank over (seed, test subject) pairs"},
        "units_planned": len(units), "units_done": done, "complete": done == len(units),
        "targets_met": f"{sum(bool(t['met']) for t in measured)} of {len(goals)}"
                       + (f" ({len(goals) - len(measured)} not measured)" if len(measured) < len(goals) else ""),
        "targets": goals, "cells": cells, "comparisons": comparisons,
        "dice_per_tissue": {f"n{n} {arm}": per_tissue(results, n, arm) for n in args.n_real for arm in ARMS
                            if any((r["task"], r["n_real"], r["arm"]) == ("segmentation", n, arm) for r in results)},
        "generators": stage_records(work, units, "generator"), "synthesis": stage_records(work, units, "synthesize"),
        "rows": rows,
    }


def write_report(args: argparse.Namespace, work: Path, units: dict[str, Unit], test_dir: Path) -> dict[str, Any]:
    """The report phase: the result JSON, the study page's block and the README row (not with ``--no-readme``)."""
    from reporting import replace_readme_row, write_result  # loads torch: only the report needs it

    report = build_report(args, work, units, test_dir)
    text = markdown(report)
    write_result(args.result_name, json.loads(json.dumps(report, default=float)), text, out=args.json,
                 update_page=not args.no_readme)
    if not args.no_readme:
        replace_readme_row(README_CELL, readme_row(report))
    print(text)
    for name, t in report["targets"].items():
        shown = f"{fmt(t.get('value'), '.2f')} {t['unit']}, 95 % {interval_text(t.get('interval95'), '.2f')}"
        print(f"{name}: {verdict(t['met'])} ({shown})")
    return report


def refuse(message: str) -> None:
    """One sentence on stderr and exit 2: input this study cannot use."""
    print(f"{Path(__file__).name}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def write_real_sets(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """The pool and the held-out test heads (phantom v2, 4 mm), written once under the work dir."""
    from sci_diffusion_medical.data.phantom_v2 import write_phantom_dataset_v2  # the domain loads after the flags

    sets = ((work / "real_pool", args.pool_subjects, POOL_SEED, POOL_CENTRE),
            (work / "real_test", args.test_subjects, TEST_SEED, TEST_CENTRE))
    for folder, count, seed, centre in sets:
        if not (folder / "dataset.json").is_file():
            write_phantom_dataset_v2(folder, count, SPACING_MM, seed, centre=centre)
        held = json.loads((folder / "dataset.json").read_text())["subjects"]
        if len(held) != count:
            refuse(f"{folder} holds {len(held)} heads, not the {count} asked for; give the count it was made with "
                   "or a new --work-dir.")
    return sets[0][0], sets[1][0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.work_dir.resolve()
    if args.unit:
        return run_unit(work, args.unit)
    args.json = args.json or REPO / "benchmarks" / "results" / f"{args.result_name}.json"
    deadline = None if args.budget_minutes is None else time.time() + 60 * args.budget_minutes
    work.mkdir(parents=True, exist_ok=True)
    pool_dir, test_dir = write_real_sets(args, work)
    units = plan_units(args, work, pool_dir, test_dir)
    if args.phase != "report":
        chosen, waiting = select_units(units, work, args.phase)
        print(f"{len(chosen)} units to run, {sum(unit_result(work, n).is_file() for n in units)} of {len(units)} done"
              + (f"; waiting for an earlier phase: {', '.join(waiting)}" if waiting else ""), flush=True)
        run_units(chosen, work, args, deadline)
    if args.phase in ("report", "all"):
        write_report(args, work, units, test_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
