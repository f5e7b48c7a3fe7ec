"""MRI->CT on head phantoms: conditional diffusion against the regression baseline, equal budget.

1. Writes paired head phantoms: ``--subjects-train`` for training (2 of them held out for
   validation, by patient) and ``--subjects-test`` other subjects for testing.
2. Trains the diffusion model (configs/medical/mri2ct_phantom.yaml) and the regression U-Net
   (configs/medical/mri2ct_regression.yaml) on the same phantoms with the same wall-clock budget,
   concurrently, in two processes of one thread each, so that each gets the same compute.
3. Translates every test subject: regression once; diffusion with DDIM at each of ``--steps``,
   K = 1 (the first sample) and K = ``--samples`` (the mean, with the per-voxel std).
4. Scores them with the SynthRAD2023 metrics (MAE, PSNR, SSIM in the body mask; bone MAE on the
   phantom labels; std-|error| correlation), and writes one JSON plus a Markdown table.

Peak memory is the process's resident-set high-water mark (Linux ``VmHWM``, reset before each row
through ``/proc/self/clear_refs``); for the trainings it is each child's ``ru_maxrss`` from ``os.wait4``.

    python benchmarks/mri2ct_phantom.py --budget-minutes 60 --save-diffusion-ckpt domains/medical/checkpoints/mri2ct_phantom.ckpt
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
           "regression": REPO / "configs/medical/mri2ct_regression.yaml"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-minutes", type=float, required=True, help="training wall-clock budget of EACH model")
    p.add_argument("--subjects-train", type=int, default=16, help="training phantoms (2 of them validate)")
    p.add_argument("--subjects-test", type=int, default=4, help="held-out test phantoms")
    p.add_argument("--val-subjects", type=int, default=2)
    p.add_argument("--spacing", type=float, default=2.0, help="phantom voxel size in mm (2: 96 x 112 x 96)")
    p.add_argument("--steps", type=int, nargs="+", default=[20, 50], help="DDIM step counts to evaluate")
    p.add_argument("--samples", type=int, default=4, help="K of the multi-sample rows")
    p.add_argument("--batch-size", type=int, default=32, help="slices per network call at evaluation")
    p.add_argument("--eval-threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    p.add_argument("--work-dir", default="runs/benchmarks/mri2ct_phantom", help="phantoms, logs, checkpoints, predictions")
    p.add_argument("--out", default="benchmarks/results/mri2ct_phantom.json")
    p.add_argument("--save-diffusion-ckpt", help="also write the trained diffusion model here (slim, EMA weights)")
    p.add_argument("--save-regression-ckpt", help="also write the trained regression model here (slim, EMA weights)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-readme", action="store_true", help="do not touch README.md")
    p.add_argument("--train-arg", action="append", default=[],
                   help="extra LightningCLI argument for both trainings, e.g. --train-arg=--data.batch_size=8")
    return p.parse_args(argv)


# ----- data -----------------------------------------------------------------------------------------
def ensure_phantoms(folder: Path, subjects: int, spacing: float, seed: int) -> None:
    from sci_diffusion_medical.phantom import write_phantom_dataset

    meta = folder / "dataset.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        if len(m["subjects"]) == subjects and m["seed"] == seed and m["spacing_mm"][0] == spacing:
            return
        raise SystemExit(f"{folder} holds other phantoms; remove it or choose another --work-dir.")
    t = time.perf_counter()
    write_phantom_dataset(folder, subjects, spacing, seed)
    print(f"wrote {subjects} phantoms to {folder} in {time.perf_counter() - t:.0f} s", flush=True)


# ----- training -------------------------------------------------------------------------------------
def max_time(minutes: float) -> str:
    s = int(round(minutes * 60))
    return f"{s // 86400:02d}:{s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def train_both(args: argparse.Namespace, train_dir: Path, work: Path) -> dict[str, dict[str, Any]]:
    """Run both ``sci-diffusion fit`` processes at once, one thread each; return their facts."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    procs = {}
    for name, config in CONFIGS.items():
        cmd = [sys.executable, "-m", "sci_diffusion.cli", "fit", "--config", str(config),
               f"--data.root={train_dir}", f"--data.val_subjects={args.val_subjects}",
               f"--data.phantom_spacing_mm={args.spacing}", f"--seed_everything={args.seed}",
               f"--trainer.max_time={max_time(args.budget_minutes)}", "--trainer.max_epochs=-1",
               f"--trainer.logger.init_args.save_dir={work / 'runs'}", f"--trainer.logger.init_args.name={name}",
               *args.train_arg]
        log = open(work / f"train_{name}.log", "w")
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO), cmd, log,
                       time.perf_counter())
    print(f"training diffusion and regression for {args.budget_minutes:g} min each (logs in {work}) ...", flush=True)
    facts = {}
    pending = dict(procs)
    while pending:
        pid, status, usage = os.wait4(-1, 0)
        name = next((n for n, (p, *_rest) in pending.items() if p.pid == pid), None)
        if name is None:
            continue
        proc, cmd, log, start = pending.pop(name)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.close()
        if proc.returncode != 0:
            tail = (work / f"train_{name}.log").read_text().splitlines()[-15:]
            raise SystemExit(f"{name} training failed (exit {proc.returncode}):\n" + "\n".join(tail))
        facts[name] = {"command": shlex.join(cmd), "wall_seconds": round(time.perf_counter() - start, 1),
                       "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "threads": 1}
    for name in CONFIGS:
        versions = sorted((work / "runs" / name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
        ckpt = versions[-1] / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise SystemExit(f"{name} training left no {ckpt}.")
        facts[name]["checkpoint"] = str(ckpt)
        facts[name]["log_dir"] = str(versions[-1])
        facts[name].update(training_summary(ckpt, versions[-1] / "metrics.csv"))
    return facts


def training_summary(ckpt: Path, metrics_csv: Path) -> dict[str, Any]:
    import csv

    import torch

    c = torch.load(ckpt, map_location="cpu", weights_only=False)
    out: dict[str, Any] = {"global_step": int(c.get("global_step", 0)), "epoch": int(c.get("epoch", 0)),
                           "parameters": int(sum(v.numel() for v in c["state_dict"].values()))}
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


def evaluate(args: argparse.Namespace, facts: dict, test_dir: Path, work: Path) -> tuple[list[dict], str]:
    import nibabel as nib
    import numpy as np
    import torch

    from sci_diffusion_medical.metrics import evaluate_directory
    from sci_diffusion_medical.nifti import save_like
    from sci_diffusion_medical.pairs import find_synthrad_pairs
    from sci_diffusion_medical.translate import (
        load_inputs,
        load_translation_model,
        mean_and_std,
        slice_geometry,
        translate_volume,
    )

    torch.set_num_threads(args.eval_threads)
    if args.eval_threads > 1 and os.getloadavg()[0] > 0.5:
        print(f"warning: load average {os.getloadavg()[0]:.1f}: other processes share the CPUs, and {args.eval_threads} "
              "OpenMP threads then wait on each other (tens of times slower); consider --eval-threads 1.", flush=True)
    pairs = find_synthrad_pairs(test_dir)
    inputs = {p["id"]: (p, load_inputs(p["mr"], p["mask"])) for p in pairs}
    pred_root = work / "predictions"
    configs = [("regression", None, 1)] + [("diffusion", s, k) for s in args.steps for k in sorted({1, args.samples})]
    plan: dict[tuple[str, int | None], dict[str, dict]] = {}  # one sampling run serves K=1 and K=samples
    method = "ru_maxrss"
    for model_kind, steps in dict.fromkeys((m, s) for m, s, _ in configs):
        module = load_translation_model(facts[model_kind]["checkpoint"], device="cpu")
        method = reset_peak_rss()
        k_max = 1 if model_kind == "regression" else args.samples
        runs = {}
        for pid, (_, inp) in inputs.items():
            vols, secs = [], []
            for j in range(k_max):  # one call per sample: each sample is timed and seeded on its own
                t = time.perf_counter()
                vols.append(translate_volume(module, inp["mr"], inp["mask"], 1, "ddim", steps or 1,
                                             seed=args.seed + j, batch_size=args.batch_size,
                                             **slice_geometry(module))[0])
                secs.append(time.perf_counter() - t)
            runs[pid] = {"volumes": np.stack(vols), "seconds": secs}
            print(f"  {model_kind} {'' if steps is None else f'ddim {steps} '}{pid}: {np.mean(secs):.1f} s per sample",
                  flush=True)
        plan[(model_kind, steps)] = {"runs": runs, "peak_rss_mb": peak_rss_mb(method)}
    rows = []
    for model_kind, steps, k in configs:
        name = "regression" if steps is None else f"diffusion_ddim{steps}_k{k}"
        folder = pred_root / name
        entry = plan[(model_kind, steps)]
        secs = []
        for pid, run in entry["runs"].items():
            _, inp = inputs[pid]
            mean, std = mean_and_std(run["volumes"][:k], inp["mask"])
            back = inp["from_ras"]
            save_like(nib.orientations.apply_orientation(mean, back), inp["mr_image"], folder / f"{pid}.nii.gz",
                      description=f"SYNTHETIC CT {name}")
            if std is not None:
                save_like(nib.orientations.apply_orientation(std, back), inp["mr_image"], folder / f"{pid}_std.nii.gz",
                          description=f"SYNTHETIC CT std {name}")
            secs.append(sum(run["seconds"][:k]))
        report = evaluate_directory(folder, test_dir, folder / "metrics.json")
        mean = report["mean"]
        curve = pooled_reliability_curve(folder, pairs) if k > 1 else None
        rows.append({
            "name": name, "model": model_kind, "sampler": None if steps is None else "ddim", "steps": steps,
            "samples": k, "nfe_per_slice": 1 if steps is None else steps * k,
            "mae_hu": mean["mae"], "psnr_db": mean["psnr"], "ssim": mean["ssim"],
            "bone_mae_hu": mean.get("tissue_mae.bone"), "soft_tissue_mae_hu": mean.get("tissue_mae.soft_tissue"),
            "air_mae_hu": mean.get("tissue_mae.air"), "std_error_r": mean.get("uncertainty_error_r"),
            "coverage_1sigma": mean.get("coverage_1sigma"), "coverage_2sigma": mean.get("coverage_2sigma"),
            "reliability_curve": curve,
            "mae_hu_std_over_patients": report["std"]["mae"],
            "seconds_per_volume": round(float(np.mean(secs)), 2), "peak_rss_mb": entry["peak_rss_mb"],
            "metrics_json": str(folder / "metrics.json"),
        })
    return rows, method


def pooled_reliability_curve(folder: Path, pairs: list[dict]) -> dict:
    """The reliability curve (``metrics.reliability_curve``) of every test patient's voxels together."""
    import numpy as np

    from sci_diffusion_medical.metrics import reliability_curve
    from sci_diffusion_medical.nifti import load_volume

    stds, preds, refs, masks = [], [], [], []
    for p in pairs:
        ct = load_volume(p["ct"])[0]
        refs.append(ct.ravel())
        masks.append(load_volume(p["mask"])[0].ravel() > 0)
        preds.append(load_volume(folder / f"{p['id']}.nii.gz")[0].ravel())
        stds.append(load_volume(folder / f"{p['id']}_std.nii.gz")[0].ravel())
    return reliability_curve(*(np.concatenate(a) for a in (stds, preds, refs, masks)))


def markdown_table(rows: list[dict]) -> str:
    def f(v, fmt):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    def coverage(r):  # a calibrated model: 68 % / 95 %
        one, two = r.get("coverage_1sigma"), r.get("coverage_2sigma")
        return "-" if one is None else f"{100 * one:.0f} / {100 * two:.0f} %"

    lines = ["| model | sampler | K | MAE (HU) | PSNR (dB) | SSIM | bone MAE (HU) | std-err r | within 1σ / 2σ | s / volume "
             "| peak RSS (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sampler = "one step" if r["steps"] is None else f"DDIM {r['steps']}"
        lines.append(f"| {r['model']} | {sampler} | {r['samples']} | {f(r['mae_hu'], '.1f')} | {f(r['psnr_db'], '.2f')} | "
                     f"{f(r['ssim'], '.4f')} | {f(r['bone_mae_hu'], '.1f')} | {f(r['std_error_r'], '.3f')} | "
                     f"{coverage(r)} | {f(r['seconds_per_volume'], '.1f')} | {f(r['peak_rss_mb'], '.0f')} |")
    return "\n".join(lines)


def json_safe(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from reporting import write_result

    from sci_diffusion.checkpoints import export_for_inference

    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_at_start = os.getloadavg()
    train_dir, test_dir = work / "phantoms_train", work / "phantoms_test"
    ensure_phantoms(train_dir, args.subjects_train, args.spacing, args.seed)
    ensure_phantoms(test_dir, args.subjects_test, args.spacing, args.seed + 1)  # other seed: other subjects
    facts = train_both(args, train_dir, work)
    for name in CONFIGS:
        print(f"{name}: {facts[name]['global_step']} steps in {facts[name]['wall_seconds']:.0f} s", flush=True)
    rows, method = evaluate(args, facts, test_dir, work)
    saved = {}
    for name, dst in (("diffusion", args.save_diffusion_ckpt), ("regression", args.save_regression_ckpt)):
        if dst:
            budget = (f"{args.budget_minutes:g} min on 1 CPU thread ({facts[name]['global_step']} steps, "
                      f"{args.subjects_train} phantoms)")
            extra = {"training_budget": budget, "benchmark": {"script": "benchmarks/mri2ct_phantom.py",
                     "started": started, "rows": [r for r in rows if r["model"] == name]}}
            size = export_for_inference(facts[name]["checkpoint"], dst, extra).stat().st_size
            saved[name] = {"path": dst, "bytes": size}
    import monai

    payload = {
        "started_utc": started,
        "machine_extra": {"cpus_available": len(os.sched_getaffinity(0)), "load_average_at_start": load_at_start,
                          "monai": monai.__version__},
        "data": {"generator": "sci_diffusion_medical.phantom.make_head_phantom (SYNTHETIC)",
                 "spacing_mm": args.spacing, "subjects_train": args.subjects_train - args.val_subjects,
                 "subjects_val": args.val_subjects, "subjects_test": args.subjects_test,
                 "train_seed": args.seed, "test_seed": args.seed + 1},
        "budget_minutes_each": args.budget_minutes,
        "training": facts,
        "evaluation": {"threads": args.eval_threads, "batch_size": args.batch_size, "sampler": "ddim (eta 0)",
                       "metrics": "SynthRAD2023 Task 1 (MAE, PSNR, SSIM in the body mask); bone MAE on phantom labels",
                       "peak_memory": f"resident-set high-water mark ({method}) of the evaluating process, per model/steps"},
        "rows": rows,
        "saved_checkpoints": saved,
    }
    markdown = (f"SYNTHETIC head phantoms at {args.spacing:g} mm: {args.subjects_train - args.val_subjects} train / "
                f"{args.subjects_test} test subjects, {args.budget_minutes:g} min of 1-thread training for each model "
                f"(diffusion {facts['diffusion']['global_step']} steps, regression {facts['regression']['global_step']} steps); "
                f"SynthRAD2023 metrics in the body mask.\n\n" + markdown_table(rows))
    curves = {f"{r['sampler'].upper()} {r['steps']}, K = {r['samples']}": r["reliability_curve"] for r in rows
              if r["reliability_curve"]}
    if curves:
        from sci_diffusion_medical.metrics import draw_reliability_png

        png = draw_reliability_png(curves, Path(args.out).with_name("mri2ct_phantom_reliability.png"))
        payload["reliability_png"] = str(png)
        markdown += f"\n\nReliability diagram of the K > 1 rows (all test voxels in the mask): `{png}`."
    write_result("mri2ct_phantom", json_safe(payload), markdown, out=Path(args.out), update_readme=not args.no_readme)
    print(markdown)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
