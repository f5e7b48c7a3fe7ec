"""MRI->CT on head phantoms: regression, conditional diffusion and residual diffusion, equal CPU budget.

1. Writes paired head phantoms: ``--subjects-train`` for training (2 of them held out for
   validation, by patient), ``--subjects-test`` other subjects for testing, and as many again imaged
   by another MR scanner (``phantom.SCANNERS["shifted"]``) as the *shifted* test set.
2. Trains three models, each for the same CPU time ``2 x --budget-cpu-hours`` (``CpuTimeBudget``,
   processes of one thread, at most three at once on the cores):
   - the regression U-Net (configs/medical/mri2ct_regression.yaml), in two legs: the first leg's
     checkpoint is the residual model's frozen mean, the second leg resumes it;
   - the plain conditional diffusion model (configs/medical/mri2ct_phantom.yaml);
   - the residual diffusion model (configs/medical/mri2ct_residual.yaml) on the regression's first
     leg: its budget counts the regression's first leg, as CorrDiff's cost includes its regression.
   All three train with MONAI's random MR intensity augmentation (the configs' ``mr_augmentation``).
3. Translates every test subject of both test sets: regression once; the diffusion models with DDIM,
   K = 1 (the first sample) and each K of ``--samples`` (the mean of the first K samples, with the
   per-voxel std).
4. Scores them with the SynthRAD2023 metrics (MAE, PSNR, SSIM in the body mask; bone MAE on the
   phantom labels; std-|error| correlation and 1σ / 2σ coverage; the mean absolute difference
   between neighbouring axial slices of the sCT against the real CT's), and writes one JSON, a
   Markdown table and a reliability diagram.

With ``--checkpoint NAME=CKPT`` (repeatable) nothing is trained: the given trained checkpoints are
evaluated as rows named NAME, each with the budget its checkpoint records (``training_budget``), for
example two residual models trained on the same regression, and the results go to ``--result-name``.

Peak memory is the process's resident-set high-water mark (Linux ``VmHWM``, reset before each row
through ``/proc/self/clear_refs``); for the trainings it is each child's ``ru_maxrss`` from ``os.wait4``.

    python benchmarks/mri2ct_phantom.py --budget-cpu-hours 0.5 \
        --save-residual-ckpt domains/medical/checkpoints/mri2ct_residual.ckpt
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"diffusion": REPO / "configs/medical/mri2ct_phantom.yaml",
           "regression": REPO / "configs/medical/mri2ct_regression.yaml",
           "residual": REPO / "configs/medical/mri2ct_residual.yaml"}
TEST_SETS = {"in-domain": "default", "shifted": "shifted"}  # test set -> phantom scanner


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-cpu-hours", type=float,
                   help="the unit of training: each model trains for 2 units of CPU time (the residual model: "
                        "1 unit of its regression plus 1 of its own)")
    p.add_argument("--subjects-train", type=int, default=16, help="training phantoms (2 of them validate)")
    p.add_argument("--subjects-test", type=int, default=4, help="held-out test phantoms, per test set")
    p.add_argument("--val-subjects", type=int, default=2)
    p.add_argument("--spacing", type=float, default=2.0, help="phantom voxel size in mm (2: 96 x 112 x 96)")
    p.add_argument("--steps", type=int, nargs="+", default=[20], help="DDIM step counts of the plain diffusion model")
    p.add_argument("--residual-steps", type=int, nargs="+", default=[10], help="DDIM step counts of the residual model")
    p.add_argument("--samples", type=int, nargs="+", default=[4],
                   help="K of the multi-sample rows, one row per K (the first K samples of the largest K)")
    p.add_argument("--batch-size", type=int, default=32, help="slices per network call at evaluation")
    p.add_argument("--eval-threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    p.add_argument("--work-dir", default="runs/benchmarks/mri2ct_phantom", help="phantoms, logs, checkpoints, predictions")
    p.add_argument("--out", help="the results JSON (default: benchmarks/results/<--result-name>.json)")
    p.add_argument("--save-diffusion-ckpt", help="also write the trained plain diffusion model here (slim, EMA weights)")
    p.add_argument("--save-regression-ckpt", help="also write the trained regression model here (slim, EMA weights)")
    p.add_argument("--save-residual-ckpt", help="also write the trained residual model here (slim, EMA weights)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reuse-training", action="store_true",
                   help="evaluate the checkpoints an earlier run left in --work-dir instead of training again")
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=CKPT",
                   help="evaluate this trained checkpoint as rows named NAME instead of training (repeatable); with any "
                        "--checkpoint nothing is trained and only the given checkpoints are evaluated")
    p.add_argument("--result-name", default="mri2ct_phantom",
                   help="the results JSON (benchmarks/results/NAME.json unless --out) and the docs/results block it fills")
    p.add_argument("--no-readme", action="store_true", help="do not touch docs/results/mri2ct_phantom.md")
    p.add_argument("--train-arg", action="append", default=[],
                   help="extra LightningCLI argument for every training, e.g. --train-arg=--data.batch_size=8")
    args = p.parse_args(argv)
    args.out = args.out or f"benchmarks/results/{args.result_name}.json"
    if min(args.samples) < 1:
        p.error("--samples takes K of at least 1.")
    if not args.checkpoint and args.budget_cpu_hours is None:
        p.error("give --budget-cpu-hours (to train), or --checkpoint NAME=CKPT (to evaluate trained models).")
    if args.checkpoint and (args.save_diffusion_ckpt or args.save_regression_ckpt or args.save_residual_ckpt
                            or args.reuse_training):
        p.error("--checkpoint evaluates trained checkpoints; it does not go with --save-*-ckpt or --reuse-training.")
    return args


MODULE_KINDS = {"MRItoCTRegression": "regression", "MRItoCTDiffusion": "diffusion",
                "MRItoCTResidualDiffusion": "residual"}  # module class -> model kind


def given_checkpoints(specs: list[str]) -> dict[str, dict[str, Any]]:
    """``{name: facts}`` of ``--checkpoint NAME=CKPT`` arguments: the path, the model kind and the
    training record the checkpoint carries; exits with one sentence on a bad argument."""
    from sci_diffusion.checkpoints import module_class_name, read_checkpoint
    from sci_diffusion.errors import UserError

    facts: dict[str, dict[str, Any]] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path or name in facts:
            raise SystemExit(f"--checkpoint takes NAME=CKPT with a new NAME, got {spec!r}.")
        try:
            meta = read_checkpoint(path)["sci_diffusion"]
        except UserError as exc:
            raise SystemExit(str(exc)) from None
        kind = MODULE_KINDS.get(module_class_name(meta))
        if kind is None:
            raise SystemExit(f"{path} holds a {meta['module_class']}, not an MRI-to-CT model.")
        facts[name] = {"checkpoint": str(Path(path).resolve()), "kind": kind, "global_step": meta.get("global_step"),
                       "budget": meta.get("training_budget", "not recorded in the checkpoint"),
                       "config": meta["config"], "data_config": meta.get("data_config")}  # what rebuilds it
    return facts


# ----- data -----------------------------------------------------------------------------------------
def ensure_phantoms(folder: Path, subjects: int, spacing: float, seed: int, scanner: str = "default") -> None:
    from sci_diffusion_medical.data.phantom import write_phantom_dataset

    meta = folder / "dataset.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        if (len(m["subjects"]) == subjects and m["seed"] == seed and m["spacing_mm"][0] == spacing
                and m.get("scanner", "default") == scanner):
            return
        raise SystemExit(f"{folder} holds other phantoms; remove it or choose another --work-dir.")
    t = time.perf_counter()
    write_phantom_dataset(folder, subjects, spacing, seed, scanner)
    print(f"wrote {subjects} phantoms ({scanner} scanner) to {folder} in {time.perf_counter() - t:.0f} s", flush=True)


# ----- training -------------------------------------------------------------------------------------
def fit_command(args: argparse.Namespace, config: Path, train_dir: Path, work: Path, name: str, hours: float,
                extra: list[str]) -> list[str]:
    """``sci-diffusion fit`` of one config, stopped by a CPU-time budget of ``hours``."""
    budget = json.dumps({"class_path": "sci_diffusion.callbacks.CpuTimeBudget", "init_args": {"hours": hours}})
    return [sys.executable, "-m", "sci_diffusion.cli", "fit", "--config", str(config),
            f"--data.root={train_dir}", f"--data.val_subjects={args.val_subjects}",
            f"--data.phantom_spacing_mm={args.spacing}", f"--seed_everything={args.seed}", "--trainer.max_epochs=-1",
            f"--trainer.callbacks+={budget}", f"--trainer.logger.init_args.save_dir={work / 'runs'}",
            f"--trainer.logger.init_args.name={name}", *extra, *args.train_arg]


def last_checkpoint(work: Path, name: str) -> tuple[Path, Path]:
    """``(last.ckpt, log folder)`` of the newest run called ``name``."""
    versions = sorted((work / "runs" / name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    ckpt = versions[-1] / "checkpoints" / "last.ckpt" if versions else work / "runs" / name / "missing"
    if not ckpt.is_file():
        raise SystemExit(f"{name} training left no {ckpt}.")
    return ckpt, versions[-1]


def train_all(args: argparse.Namespace, train_dir: Path, work: Path,
              configs: dict[str, Path] = CONFIGS) -> dict[str, dict[str, Any]]:
    """Train the models of ``configs`` (module docstring, step 2; ``benchmarks/mri2ct_v2.py`` gives no plain
    diffusion model); return each run's facts."""
    unit = args.budget_cpu_hours
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

    def jobs_after(finished: str) -> dict[str, list[str]]:
        if finished == "start":
            jobs = {"regression_leg1": fit_command(args, configs["regression"], train_dir, work, "regression_leg1", unit, [])}
            if "diffusion" in configs:
                jobs["diffusion"] = fit_command(args, configs["diffusion"], train_dir, work, "diffusion", 2 * unit, [])
            return jobs
        if finished == "regression_leg1":
            first, _ = last_checkpoint(work, "regression_leg1")
            return {"regression": fit_command(args, configs["regression"], train_dir, work, "regression", 2 * unit,
                                              [f"--ckpt_path={first}"]),
                    "residual": fit_command(args, configs["residual"], train_dir, work, "residual", unit,
                                            [f"--model.regression_ckpt={first}"])}
        return {}

    facts: dict[str, dict[str, Any]] = {}
    running: dict[int, tuple[str, subprocess.Popen, list[str], Any, float]] = {}

    def launch(finished: str) -> None:
        for name, cmd in jobs_after(finished).items():
            log = open(work / f"train_{name}.log", "w")
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            running[proc.pid] = (name, proc, cmd, log, time.perf_counter())
            print(f"  training {name} ({time.strftime('%H:%M:%S')}, log {log.name})", flush=True)

    print(f"training: budget unit {unit:g} CPU-hours, one thread per process (logs in {work}) ...", flush=True)
    launch("start")
    while running:
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        name, proc, cmd, log, start = running.pop(pid)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.close()
        if proc.returncode != 0:
            tail = (work / f"train_{name}.log").read_text().splitlines()[-15:]
            raise SystemExit(f"{name} training failed (exit {proc.returncode}):\n" + "\n".join(tail))
        facts[name] = {"command": shlex.join(cmd), "wall_seconds": round(time.perf_counter() - start, 1),
                       "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
                       "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "threads": 1}
        print(f"  {name} finished after {facts[name]['wall_seconds']:.0f} s ({facts[name]['cpu_seconds']:.0f} CPU-s)", flush=True)
        launch(name)
    return facts


def collect_training(work: Path, facts: dict[str, dict[str, Any]], unit: float,
                     models: tuple[str, ...] = tuple(CONFIGS)) -> dict[str, dict[str, Any]]:
    """Add each model's checkpoint, steps and losses to ``facts`` (or build them from an earlier run)."""
    budgets = {"regression": (f"{2 * unit:g} CPU-hours in two legs of {unit:g}", 2 * unit),
               "diffusion": (f"{2 * unit:g} CPU-hours", 2 * unit),
               "residual": (f"{unit:g} CPU-hours of its regression (the regression's first leg) + {unit:g} of its own",
                            2 * unit)}
    for name in ("regression_leg1", *models):
        ckpt, log_dir = last_checkpoint(work, name)
        entry = facts.setdefault(name, {})
        entry.update({"checkpoint": str(ckpt), "log_dir": str(log_dir), **training_summary(ckpt, log_dir / "metrics.csv")})
        if name in budgets:
            entry["budget"], entry["budget_cpu_hours"] = budgets[name]
    return facts


def training_summary(ckpt: Path, metrics_csv: Path) -> dict[str, Any]:
    import csv

    import torch

    c = torch.load(ckpt, map_location="cpu", weights_only=False)
    out: dict[str, Any] = {"global_step": int(c.get("global_step", 0)), "epoch": int(c.get("epoch", 0)),
                           "parameters": int(sum(v.numel() for k, v in c["state_dict"].items()
                                                 if not k.startswith("regression.")))}
    spent = (c.get("callbacks") or {}).get("CpuTimeBudget")
    if spent:
        out["training_cpu_hours"] = round(spent["cpu_seconds"] / 3600.0, 3)
    if metrics_csv.is_file():
        rows = list(csv.DictReader(open(metrics_csv)))
        for key in ("train/loss", "val/loss", "val/mae_hu"):
            values = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
            if values:
                out[f"last_{key.replace('/', '_')}"] = values[-1]
    return out


# ----- evaluation -----------------------------------------------------------------------------------
def reset_peak_rss() -> str:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM"
    except OSError:
        return "ru_maxrss"


def peak_rss_mb(method: str) -> float:
    if method == "VmHWM":
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def evaluation_plan(args: argparse.Namespace, kinds: dict[str, str]) -> list[tuple[str, str, int | None, bool]]:
    """``(model name, kind, DDIM steps or None, shared noise)`` of every sampling run, for the models
    ``{name: kind}``; each run serves K = 1 and every K of ``--samples``."""
    plan: list[tuple[str, str, int | None, bool]] = []
    for name, kind in kinds.items():
        if kind == "regression":
            plan.append((name, kind, None, False))
        elif kind == "diffusion":
            plan += [(name, kind, s, False) for s in args.steps]
        else:
            plan += [(name, kind, s, shared) for s in args.residual_steps for shared in (False, True)]
    return plan


def evaluate(args: argparse.Namespace, facts: dict, kinds: dict[str, str], test_dirs: dict[str, Path],
             work: Path) -> tuple[list[dict], str]:
    import numpy as np
    import torch

    from sci_diffusion_medical.data.pairs import find_synthrad_pairs
    from sci_diffusion_medical.evaluation.metrics import neighbour_slice_difference
    from sci_diffusion_medical.translation.inputs import load_inputs
    from sci_diffusion_medical.translation.model import load_translation_model, slice_geometry
    from sci_diffusion_medical.translation.volume import translate_volume

    torch.set_num_threads(args.eval_threads)
    if args.eval_threads > 1 and os.getloadavg()[0] > 0.5:
        print(f"warning: load average {os.getloadavg()[0]:.1f}: other processes share the CPUs, and {args.eval_threads} "
              "OpenMP threads then wait on each other (tens of times slower); consider --eval-threads 1.", flush=True)
    rows = []
    method = "ru_maxrss"
    for test_set, test_dir in test_dirs.items():
        pairs = find_synthrad_pairs(test_dir)
        inputs = {p["id"]: (p, load_inputs(p["mr"], p["mask"], p["ct"])) for p in pairs}
        real_slice_difference = float(np.mean([neighbour_slice_difference(inp["ct"], inp["mask"])
                                               for _, inp in inputs.values()]))
        for model_name, model_kind, steps, shared in evaluation_plan(args, kinds):
            if shared and test_set != "in-domain":
                continue  # the shared-noise variant is a slice-consistency study, on the in-domain set only
            module = load_translation_model(facts[model_name]["checkpoint"], device="cpu")
            method = reset_peak_rss()
            k_max = 1 if model_kind == "regression" else max(args.samples)
            runs = {}
            for pid, (_, inp) in inputs.items():
                vols, secs = [], []
                for j in range(k_max):  # one call per sample: each sample is timed and seeded on its own
                    t = time.perf_counter()
                    vols.append(translate_volume(module, inp["mr"], inp["mask"], 1, "ddim", steps or 1,
                                                 seed=args.seed + j, batch_size=args.batch_size, shared_noise=shared,
                                                 **slice_geometry(module))[0])
                    secs.append(time.perf_counter() - t)
                runs[pid] = {"volumes": np.stack(vols), "seconds": secs}
                print(f"  {test_set} {model_name} {'' if steps is None else f'ddim {steps} '}{'shared noise ' if shared else ''}"
                      f"{pid}: {np.mean(secs):.1f} s per sample", flush=True)
            peak = peak_rss_mb(method)
            for k in sorted({1, *(k for k in args.samples if k <= k_max)}):
                name = model_name if steps is None else f"{model_name}_ddim{steps}_k{k}{'_shared' if shared else ''}"
                row = score_k_mean(runs, inputs, k, work / "predictions" / test_set / name, test_dir, name)
                rows.append({"test_set": test_set, "name": name, "model": model_name, "kind": model_kind,
                             "sampler": None if steps is None else "ddim", "steps": steps, "samples": k,
                             "shared_noise": shared, "nfe_per_slice": 1 if steps is None else steps * k, **row,
                             "ct_slice_difference_hu": real_slice_difference, "peak_rss_mb": peak})
    return rows, method


def score_k_mean(runs: dict, inputs: dict, k: int, folder: Path, test_dir: Path, name: str) -> dict:
    """The mean (and std) of each patient's first ``k`` samples written as SYNTHETIC CTs into ``folder`` and scored
    against ``test_dir`` (``evaluate_directory``): the row's metrics, slice consistency and seconds per volume."""
    import nibabel as nib
    import numpy as np

    from sci_diffusion_medical.evaluation.directory import evaluate_directory
    from sci_diffusion_medical.evaluation.metrics import neighbour_slice_difference
    from sci_diffusion_medical.io.nifti import save_like
    from sci_diffusion_medical.translation.volume import mean_and_std

    secs, slice_differences = [], []
    for pid, run in runs.items():
        _, inp = inputs[pid]
        mean, std = mean_and_std(run["volumes"][:k], inp["mask"])
        slice_differences.append(neighbour_slice_difference(mean, inp["mask"]))
        back = inp["from_ras"]
        save_like(nib.orientations.apply_orientation(mean, back), inp["mr_image"], folder / f"{pid}.nii.gz",
                  description=f"SYNTHETIC CT {name}")
        if std is not None:
            save_like(nib.orientations.apply_orientation(std, back), inp["mr_image"],
                      folder / f"{pid}_std.nii.gz", description=f"SYNTHETIC CT std {name}")
        secs.append(sum(run["seconds"][:k]))
    report = evaluate_directory(folder, test_dir, folder / "metrics.json")
    mean_metrics = report["mean"]
    return {"mae_hu": mean_metrics["mae"], "psnr_db": mean_metrics["psnr"], "ssim": mean_metrics["ssim"],
            "bone_mae_hu": mean_metrics.get("tissue_mae.bone"),
            "soft_tissue_mae_hu": mean_metrics.get("tissue_mae.soft_tissue"),
            "air_mae_hu": mean_metrics.get("tissue_mae.air"), "std_error_r": mean_metrics.get("uncertainty_error_r"),
            "coverage_1sigma": mean_metrics.get("coverage_1sigma"), "coverage_2sigma": mean_metrics.get("coverage_2sigma"),
            "reliability_curve": report.get("reliability_curve"),
            "slice_difference_hu": float(np.mean(slice_differences)),
            "mae_hu_std_over_patients": report["std"]["mae"],
            "seconds_per_volume": round(float(np.mean(secs)), 2), "metrics_json": str(folder / "metrics.json")}


def markdown_table(rows: list[dict]) -> str:
    def f(v, fmt):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    def coverage(r):  # a calibrated model: 68 % / 95 %
        one, two = r.get("coverage_1sigma"), r.get("coverage_2sigma")
        return "-" if one is None else f"{100 * one:.0f} / {100 * two:.0f} %"

    lines = ["| test set | model | sampler | K | MAE (HU) | PSNR (dB) | SSIM | bone MAE (HU) | std-err r | within 1σ / 2σ "
             "| slice diff. (HU) | s / volume | peak RSS (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sampler = "one step" if r["steps"] is None else f"DDIM {r['steps']}" + (", shared noise" if r["shared_noise"] else "")
        lines.append(f"| {r['test_set']} | {r['model']} | {sampler} | {r['samples']} | {f(r['mae_hu'], '.1f')} | "
                     f"{f(r['psnr_db'], '.2f')} | {f(r['ssim'], '.4f')} | {f(r['bone_mae_hu'], '.1f')} | "
                     f"{f(r['std_error_r'], '.3f')} | {coverage(r)} | {f(r['slice_difference_hu'], '.1f')} "
                     f"(CT {f(r['ct_slice_difference_hu'], '.1f')}) | {f(r['seconds_per_volume'], '.1f')} | "
                     f"{f(r['peak_rss_mb'], '.0f')} |")
    return "\n".join(lines)


def shift_ratios(rows: list[dict]) -> dict[str, float]:
    """Each model's MAE on the shifted test set over its in-domain MAE (same sampler and K)."""
    by_key = {(r["test_set"], r["name"]): r["mae_hu"] for r in rows}
    return {name: round(by_key[("shifted", name)] / by_key[("in-domain", name)], 3)
            for (test_set, name) in by_key if test_set == "shifted" and ("in-domain", name) in by_key}


def calibration_sentence(samples: list[int]) -> str:
    """What a calibrated sampler's 1σ / 2σ coverage is with each K of ``samples``, beside the table
    ("" when no K is above 1: no row then has a std to cover with)."""
    from sci_diffusion_medical.evaluation.metrics import calibrated_coverage

    covers = []
    for k in sorted(k for k in set(samples) if k > 1):
        c = calibrated_coverage(k)
        covers.append(f"{100 * c['coverage_1sigma']:.0f} / {100 * c['coverage_2sigma']:.0f} % with K = {k} samples")
    if not covers:
        return ""
    return (f"a calibrated sampler covers {', '.join(covers)} (Gaussian errors: the K-mean's error is "
            "sqrt(1 + 1/K) times a Student t with K - 1 degrees of freedom in units of the samples' std; "
            "`metrics.calibrated_coverage`), and 68 / 95 % only as K grows; more is underconfident, less overconfident.")


def training_sentence(args: argparse.Namespace, facts: dict[str, dict[str, Any]]) -> str:
    """How the evaluated models were trained, for the table's header."""
    if args.checkpoint:
        return "Given trained checkpoints: " + "; ".join(f"**{name}** (`{Path(f['checkpoint']).name}`): {f['budget']}"
                                                         for name, f in facts.items()) + "."
    steps = {name: facts[name]["global_step"] for name in ("regression", "diffusion", "residual")}
    return (f"{args.subjects_train - args.val_subjects} training subjects. Every model trained for "
            f"{2 * args.budget_cpu_hours:g} CPU-hours on one thread, with MR intensity augmentation: regression "
            f"{steps['regression']} steps, diffusion {steps['diffusion']} steps, residual "
            f"{facts['regression_leg1']['global_step']} steps of its regression ({args.budget_cpu_hours:g} CPU-hours) + "
            f"{steps['residual']} of its own.")


def json_safe(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def save_checkpoints(args: argparse.Namespace, facts: dict, rows: list[dict], started: str) -> dict:
    """The ``--save-*-ckpt`` exports: each trained model slimmed (``export_for_inference``) with its budget and its
    rows of this run recorded; ``{model: {"path", "bytes"}}``."""
    from sci_diffusion.checkpoints import export_for_inference

    saved = {}
    for name, dst in (("diffusion", args.save_diffusion_ckpt), ("regression", args.save_regression_ckpt),
                      ("residual", args.save_residual_ckpt)):
        if dst:
            steps = facts[name]["global_step"]
            if name == "residual":
                steps = f"{facts['regression_leg1']['global_step']} regression + {steps} residual"
            budget = f"{facts[name]['budget']} on 1 CPU thread ({steps} steps, {args.subjects_train} phantoms)"
            extra = {"training_budget": budget, "benchmark": {"script": "benchmarks/mri2ct_phantom.py",
                     "started": started, "rows": [r for r in rows if r["model"] == name]}}
            size = export_for_inference(facts[name]["checkpoint"], dst, extra).stat().st_size
            saved[name] = {"path": dst, "bytes": size}
    return saved


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from reporting import write_result

    from sci_diffusion_medical.evaluation.metrics import calibrated_coverage

    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_at_start = os.getloadavg()
    train_dir = work / "phantoms_train"
    test_dirs = {name: work / f"phantoms_test_{scanner}" for name, scanner in TEST_SETS.items()}
    if not args.checkpoint:
        ensure_phantoms(train_dir, args.subjects_train, args.spacing, args.seed)
    for offset, (name, scanner) in enumerate(TEST_SETS.items(), start=1):  # other seeds: other subjects
        ensure_phantoms(test_dirs[name], args.subjects_test, args.spacing, args.seed + offset, scanner)
    if args.checkpoint:
        facts = given_checkpoints(args.checkpoint)
        kinds = {name: f["kind"] for name, f in facts.items()}
    else:
        facts = {} if args.reuse_training else train_all(args, train_dir, work)
        facts = collect_training(work, facts, args.budget_cpu_hours)
        kinds = {name: name for name in ("regression", "diffusion", "residual")}
    for name in kinds:
        print(f"{name}: {facts[name]['global_step']} steps, {facts[name]['budget']}", flush=True)
    rows, method = evaluate(args, facts, kinds, test_dirs, work)
    saved = save_checkpoints(args, facts, rows, started)
    import monai

    ratios = shift_ratios(rows)
    payload = {
        "started_utc": started,
        "machine_extra": {"cpus_available": len(os.sched_getaffinity(0)), "load_average_at_start": load_at_start,
                          "monai": monai.__version__},
        "data": {"generator": "sci_diffusion_medical.data.phantom.make_head_phantom (SYNTHETIC)",
                 "spacing_mm": args.spacing,
                 "subjects_train": None if args.checkpoint else args.subjects_train - args.val_subjects,
                 "subjects_val": args.val_subjects, "subjects_test": args.subjects_test,
                 "train_seed": args.seed, "test_seeds": {name: args.seed + i for i, name in enumerate(TEST_SETS, 1)},
                 "test_scanners": TEST_SETS},
        "budget_cpu_hours_each": None if args.checkpoint else 2 * args.budget_cpu_hours,
        "training": facts,
        "evaluation": {"threads": args.eval_threads, "batch_size": args.batch_size, "sampler": "ddim (eta 0)",
                       "calibrated_coverage_at_k": {str(k): calibrated_coverage(k) for k in args.samples if k > 1},
                       "metrics": "SynthRAD2023 Task 1 (MAE, PSNR, SSIM in the body mask); bone MAE on phantom labels",
                       "slice_difference": "mean |sCT[z+1] - sCT[z]| (HU) over voxel pairs inside the mask, axial; "
                                           "the CT's own figure beside it",
                       "peak_memory": f"resident-set high-water mark ({method}) of the evaluating process, per model/steps"},
        "rows": rows,
        "shifted_over_in_domain_mae": ratios,
        "saved_checkpoints": saved,
    }
    coverage = calibration_sentence(args.samples)
    markdown = (f"SYNTHETIC head phantoms at {args.spacing:g} mm: {args.subjects_test} test subjects per test set "
                f"(*shifted*: imaged by another MR scanner). {training_sentence(args, facts)} SynthRAD2023 metrics in the "
                "body mask.\n\n" + markdown_table(rows)
                + (f"\n\nWithin 1σ / 2σ: {coverage}" if coverage else "")
                + "\n\nShifted MAE / in-domain MAE: " + ", ".join(f"{name} {ratio:.2f}" for name, ratio in ratios.items())
                + ".")
    curves = {f"{r['model']} {r['sampler'].upper()} {r['steps']}, K = {r['samples']}": r["reliability_curve"] for r in rows
              if r["reliability_curve"] and r["test_set"] == "in-domain" and not r["shared_noise"]}
    if curves:
        from sci_diffusion_medical.io.figures import reliability_diagram

        png = reliability_diagram(curves, Path(args.out).with_name(f"{args.result_name}_reliability.png"))
        payload["reliability_png"] = str(png)
        markdown += f"\n\nReliability diagram of the in-domain K > 1 rows (all test voxels in the mask): `{png}`."
    write_result(args.result_name, json_safe(payload), markdown, out=Path(args.out), update_page=not args.no_readme)
    print(markdown)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
