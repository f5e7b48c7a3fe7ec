"""Does synthetic paired data help a downstream MR->CT model? The augmentation-utility study (issue 13).

For each n_real in ``--n-real`` (the first n subjects of a pool of real phantoms):

1. a paired synthesis generator (configs/medical/paired_synthesis.yaml) trains on those n subjects
   only, for ``--generator-cpu-hours``: a generator trained on more would carry them into the arm;
2. it writes ``--synthetic`` SYNTHETIC subjects (``sci-diffusion synthesize medical``, 4 mm);
3. the downstream MR->CT regression (configs/medical/mri2ct_regression.yaml, at 4 mm, no validation
   split) trains three times, each for the same ``--downstream-cpu-hours``: on the n real subjects
   (*real*), on them plus the synthetic ones (*real + synthetic*), and on the synthetic ones alone
   (*synthetic*);
4. each downstream model translates the held-out real test phantoms, scored with MAE, PSNR and SSIM
   (``evaluate mri2ct``'s metrics, in the body mask, on the test subjects' own 2 mm grid).

It also describes each generator's synthetic subjects: per-tissue 1-D Wasserstein distances of CT (HU)
and normalised MR against the arm's real subjects (the real subjects' own spread across them beside
it), diversity (mean pairwise SSIM of the CT volumes, synthetic against real), the neighbouring-slice
difference of the synthetic CT against the real CT, the memorisation audit (``audit medical``) against
the arm's training subjects, with the held-out real test phantoms as its reference, and seconds and peak
RSS per synthetic subject. Every training is one process of one thread (``CpuTimeBudget`` counts CPU
time), ``--jobs`` at a time.

    python benchmarks/augmentation_utility.py --generator-cpu-hours 0.2 --downstream-cpu-hours 0.06
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from jobs import Job, run_jobs  # noqa: E402

GENERATOR_CONFIG = REPO / "configs/medical/paired_synthesis.yaml"
DOWNSTREAM_CONFIG = REPO / "configs/medical/mri2ct_regression.yaml"
ARMS = ("real", "real+synthetic", "synthetic")
MODEL_SPACING_MM = 4.0  # the generator's grid; the downstream models train on it too


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/augmentation_utility"))
    p.add_argument("--n-real", default="2,5,10", help="comma-separated real-subject counts")
    p.add_argument("--synthetic", type=int, default=10, help="synthetic subjects per arm")
    p.add_argument("--test-subjects", type=int, default=4)
    p.add_argument("--generator-cpu-hours", type=float, default=0.2)
    p.add_argument("--downstream-cpu-hours", type=float, default=0.06)
    p.add_argument("--steps", type=int, default=20, help="DDIM steps of the generator")
    p.add_argument("--jobs", type=int, default=2, help="processes at once (one thread each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-generator-ckpt", type=Path, help="export the largest arm's generator here (bundled model)")
    p.add_argument("--no-readme", action="store_true")
    args = p.parse_args(argv)
    args.n_real = sorted(int(v) for v in args.n_real.split(","))
    return args


def fit(config: Path, root: Path, work: Path, name: str, hours: float, extra: list[str]) -> list[str]:
    budget = json.dumps({"class_path": "sci_diffusion.callbacks.CpuTimeBudget", "init_args": {"hours": hours}})
    return [sys.executable, "-m", "sci_diffusion.cli", "fit", "--config", str(config), f"--data.root={root}",
            "--data.val_subjects=0", "--trainer.max_epochs=-1", f"--trainer.callbacks+={budget}",
            f"--trainer.logger.init_args.save_dir={work / 'runs'}", f"--trainer.logger.init_args.name={name}", *extra]


def last_checkpoint(work: Path, name: str) -> Path:
    versions = sorted((work / "runs" / name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    ckpt = versions[-1] / "checkpoints" / "last.ckpt" if versions else Path("missing")
    if not ckpt.is_file():
        raise SystemExit(f"{name} left no last.ckpt.")
    return ckpt


def global_step(ckpt: Path) -> int:
    """The training step a Lightning checkpoint was saved at."""
    import torch

    return int(torch.load(ckpt, map_location="cpu", weights_only=False).get("global_step", 0))


def link_subjects(folders: list[Path], dest: Path) -> Path:
    """A SynthRAD folder of hard-linked copies of the given subject folders (no data copied)."""
    dest.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        if not (dest / folder.name).exists():
            shutil.copytree(folder, dest / folder.name, copy_function=os.link)
    return dest


def subject_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


# ----- describing the synthetic data ---------------------------------------------------------------
def load_at_model_grid(folder: Path) -> dict[str, Any]:
    """A subject's CT (HU), normalised MR and labels at 4 mm, as numpy (X, Y, Z)."""
    from sci_diffusion_medical.data.paired_slices import plain_tensor
    from sci_diffusion_medical.data.transforms import mri2ct_transforms, unit_to_ct

    keys = ("mr", "ct", "mask", "labels")
    data = mri2ct_transforms(keys, spacing_mm=MODEL_SPACING_MM)({k: str(folder / f"{k}.nii.gz") for k in keys})
    out = {k: plain_tensor(data[k])[0].numpy() for k in keys}
    out["ct"] = unit_to_ct(out["ct"])
    out["labels"] = out["labels"].round().astype(int)
    return out


def describe(synthetic: list[dict], real: list[dict], seed: int = 0) -> dict[str, Any]:
    """Per-tissue Wasserstein distances, diversity and slice consistency (module docstring)."""
    import numpy as np
    from scipy.stats import wasserstein_distance

    from sci_diffusion_medical.data.phantom import TISSUE_LABELS
    from sci_diffusion_medical.evaluation.metrics import neighbour_slice_difference, ssim

    rng = np.random.default_rng(seed)

    def values(subjects, key, label, limit=20000):
        v = np.concatenate([s[key][s["labels"] == label] for s in subjects])
        return rng.choice(v, min(limit, v.size), replace=False) if v.size else v

    tissues = {}
    for label, name in TISSUE_LABELS.items():
        row = {}
        for key, unit in (("ct", "hu"), ("mr", "normalised")):
            syn, ref = values(synthetic, key, label), values(real, key, label)
            row[f"{key}_w1_{unit}"] = float(wasserstein_distance(syn, ref)) if syn.size and ref.size else None
            # the real subjects' own spread: each real subject against the other real ones
            own = [wasserstein_distance(values([s], key, label), values([o for o in real if o is not s], key, label))
                   for s in real if len(real) > 1 and (s["labels"] == label).any()]
            row[f"{key}_w1_real_vs_real_{unit}"] = float(np.mean(own)) if own else None
        row["voxel_fraction_synthetic"] = float(np.mean([(s["labels"] == label).mean() for s in synthetic]))
        row["voxel_fraction_real"] = float(np.mean([(s["labels"] == label).mean() for s in real]))
        tissues[name] = row

    def mean_pairwise_ssim(subjects):
        pairs = [(a, b) for i, a in enumerate(subjects) for b in subjects[i + 1:]]
        return float(np.mean([ssim(a["ct"], b["ct"]) for a, b in pairs])) if pairs else None

    return {
        "tissues": tissues,
        "diversity_mean_pairwise_ssim_synthetic": mean_pairwise_ssim(synthetic),
        "diversity_mean_pairwise_ssim_real": mean_pairwise_ssim(real),
        "slice_difference_hu_synthetic": float(np.mean([neighbour_slice_difference(s["ct"], s["mask"]) for s in synthetic])),
        "slice_difference_hu_real": float(np.mean([neighbour_slice_difference(s["ct"], s["mask"]) for s in real])),
    }


# ----- the downstream evaluation -----------------------------------------------------------------
def score_translations(ckpt: Path, test_dir: Path, out: Path) -> dict[str, Any]:
    """Translate every test subject with ``ckpt`` into ``out`` and score it (SynthRAD2023 metrics in the body mask,
    ``evaluate_directory``'s report: per patient under ``patients``, MAE in HU)."""
    from sci_diffusion_medical.data.pairs import find_synthrad_pairs
    from sci_diffusion_medical.evaluation.directory import evaluate_directory
    from sci_diffusion_medical.translation.translate import translate_file

    for pair in find_synthrad_pairs(test_dir):
        translate_file(pair["mr"], out / f"{pair['id']}.nii.gz", mask=pair["mask"], ckpt=str(ckpt))
    return evaluate_directory(out, test_dir, out / "metrics.json")


def evaluate_downstream(ckpt: Path, test_dir: Path, out: Path) -> dict[str, float]:
    """Translate every test subject with ``ckpt`` and score it: the means over subjects."""
    report = score_translations(ckpt, test_dir, out)
    return {"mae_hu": report["mean"]["mae"], "psnr_db": report["mean"]["psnr"], "ssim": report["mean"]["ssim"],
            "mae_hu_std_over_subjects": report["std"]["mae"]}


def draw_utility_png(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for arm in ARMS:
        pts = sorted((r["n_real"], r["mae_hu"]) for r in rows if r["arm"] == arm)
        ax.plot(*zip(*pts), marker="o", label=arm)
    ax.set_xlabel("real training subjects (n_real)")
    ax.set_ylabel("test MAE (HU), lower is better")
    ax.set_title("MR->CT regression: real, real + synthetic, synthetic only", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(rows: list[dict], described: dict, synth_speed: dict, args: argparse.Namespace) -> str:
    lines = ["| n_real | arm | training subjects | MAE (HU) | PSNR (dB) | SSIM |", "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n_real']} | {r['arm']} | {r['training_subjects']} | {r['mae_hu']:.1f} | {r['psnr_db']:.2f} | "
                     f"{r['ssim']:.3f} |")
    lines += ["", "| generator (n_real) | diversity SSIM syn / real | slice diff. syn / real (HU) | CT W1 bone, soft (HU) "
              "| audit flagged: subjects, slices (expected) | s / subject | peak RSS (MB) |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for n, d in described.items():
        t = d["tissues"]
        a, a_n = d["audit"]["flagged"], d["audit"]["n_synthetic"]
        lines.append(f"| {n} | {d['diversity_mean_pairwise_ssim_synthetic']:.3f} / "
                     f"{d['diversity_mean_pairwise_ssim_real'] or float('nan'):.3f} | {d['slice_difference_hu_synthetic']:.1f} / "
                     f"{d['slice_difference_hu_real']:.1f} | {t['cortical_bone']['ct_w1_hu'] or float('nan'):.0f}, "
                     f"{t['grey_matter']['ct_w1_hu'] or float('nan'):.0f} | {len(a['subjects'])}/{a_n}, "
                     f"{a['slices']}/{a['n_slices']} ({100 * a['expected_fraction']:.0f} %) | "
                     f"{synth_speed[n]['seconds_per_subject']:.1f} | "
                     f"{synth_speed[n]['peak_rss_mb']:.0f} |")
    lines.append(f"\nBudgets: each generator {args.generator_cpu_hours:g} CPU-hours, each downstream model "
                 f"{args.downstream_cpu_hours:g} CPU-hours (one thread); {args.synthetic} synthetic subjects per arm, "
                 f"{args.test_subjects} held-out real test phantoms; plot: benchmarks/results/augmentation_utility.png.")
    return "\n".join(lines)


def plan_jobs(args: argparse.Namespace, work: Path, pool: list[Path]) -> tuple[list[Job], dict[int, dict[str, Path]]]:
    """The runs of the study, in the order they start: per n_real a generator, the real-only downstream arm,
    the synthesis and the two arms that use it; and each arm's training folder."""
    jobs, plan = [], {}
    for n in args.n_real:
        real = link_subjects(pool[:n], work / f"n{n}" / "real")
        synth = work / f"n{n}" / "synthetic"
        plan[n] = {"real": real, "synthetic": synth, "real+synthetic": work / f"n{n}" / "real+synthetic"}
        jobs.append(Job(f"generator_n{n}", fit(GENERATOR_CONFIG, real, work, f"generator_n{n}", args.generator_cpu_hours, [])))
    for n in args.n_real:  # the real-only arms need no generator: they fill the gaps
        jobs.append(Job(f"downstream_n{n}_real", fit(DOWNSTREAM_CONFIG, plan[n]["real"], work, f"downstream_n{n}_real",
                                                     args.downstream_cpu_hours, [f"--data.spacing_mm={MODEL_SPACING_MM}"])))
    for n in args.n_real:
        gen = work / "runs" / f"generator_n{n}"
        jobs.append(Job(f"synthesize_n{n}", [sys.executable, "-m", "sci_diffusion.cli", "synthesize", "medical",
                                              "--num", str(args.synthetic), "--out", str(plan[n]["synthetic"]),
                                              "--seed", str(args.seed), "--steps", str(args.steps),
                                              "--ckpt", str(gen / "version_0/checkpoints/last.ckpt")],
                        after=[f"generator_n{n}"]))
        for arm in ("real+synthetic", "synthetic"):
            jobs.append(Job(f"downstream_n{n}_{arm}", fit(DOWNSTREAM_CONFIG, plan[n][arm], work,
                                                          f"downstream_n{n}_{arm.replace('+', '_')}",
                                                          args.downstream_cpu_hours,
                                                          [f"--data.spacing_mm={MODEL_SPACING_MM}"]),
                            after=[f"synthesize_n{n}", f"link_n{n}"]))
        jobs.append(Job(f"link_n{n}", [sys.executable, "-c", (
            "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; import augmentation_utility as a; "
            f"a.link_subjects(a.subject_folders(Path('{plan[n]['real']}')) + a.subject_folders(Path('{plan[n]['synthetic']}')), "
            f"Path('{plan[n]['real+synthetic']}'))")], after=[f"synthesize_n{n}"]))
    return jobs, plan


def score_arms(args: argparse.Namespace, work: Path, plan: dict, done: dict, test_dir: Path) -> tuple[list, dict, dict]:
    """Each downstream arm scored on the real test subjects, and each generator's synthetic data described
    (fidelity, diversity, memorisation audit, synthesis speed): ``(rows, described, synthesis speed)``."""
    from sci_diffusion_medical.evaluation.audit import audit_directories

    rows, described, synth_speed = [], {}, {}
    test_subjects = [load_at_model_grid(f) for f in subject_folders(test_dir)]
    for n in args.n_real:
        synth_dir = plan[n]["synthetic"]
        log = (work / f"synthesize_n{n}.log").read_text()
        seconds = float(log.split("(")[-1].split(" s per subject")[0]) if "s per subject" in log else float("nan")
        synth_speed[n] = {"seconds_per_subject": seconds, "peak_rss_mb": done[f"synthesize_n{n}"].facts["peak_rss_mb"],
                          "cpu_seconds": done[f"synthesize_n{n}"].facts["cpu_seconds"]}
        synthetic = [load_at_model_grid(f) for f in subject_folders(synth_dir)]
        real = [load_at_model_grid(f) for f in subject_folders(plan[n]["real"])]
        d = describe(synthetic, real, args.seed)
        d["test_set_reference"] = {"diversity_mean_pairwise_ssim_test": describe(test_subjects, test_subjects)[
            "diversity_mean_pairwise_ssim_real"]}
        d["audit"] = audit_directories(synth_dir, plan[n]["real"], work / f"audit_n{n}.json",
                                       png=work / f"audit_n{n}.png", held_out_dir=test_dir)
        described[n] = d
        for arm in ARMS:
            name = f"downstream_n{n}_{arm.replace('+', '_')}"
            ckpt = last_checkpoint(work, name)
            scores = evaluate_downstream(ckpt, test_dir, work / "predictions" / name)
            rows.append({"n_real": n, "arm": arm, "training_subjects": len(subject_folders(plan[n][arm])),
                         **scores, "global_step": global_step(ckpt),
                         "training": done[f"downstream_n{n}_{arm}"].facts})
            print(f"  n_real {n} {arm}: MAE {scores['mae_hu']:.1f} HU", flush=True)
    return rows, described, synth_speed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from reporting import RESULTS, write_result

    from sci_diffusion_medical.data.phantom import write_phantom_dataset

    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    pool_dir, test_dir = work / "real_pool", work / "real_test"
    for folder, count, seed in ((pool_dir, max(args.n_real), args.seed), (test_dir, args.test_subjects, args.seed + 1000)):
        if not (folder / "dataset.json").is_file():
            write_phantom_dataset(folder, count, 2.0, seed)
    jobs, plan = plan_jobs(args, work, subject_folders(pool_dir))
    # runs in plan order: generators first (they gate the most), real arms next, the rest as they unlock
    done = run_jobs(jobs, work, args.jobs)
    rows, described, synth_speed = score_arms(args, work, plan, done, test_dir)
    png = RESULTS / "augmentation_utility.png"
    draw_utility_png(rows, png)
    generators = {n: {**done[f"generator_n{n}"].facts, "global_step": global_step(last_checkpoint(work, f"generator_n{n}"))}
                  for n in args.n_real}
    if args.save_generator_ckpt is not None:
        from sci_diffusion.checkpoints import export_for_inference

        n = max(args.n_real)
        export_for_inference(last_checkpoint(work, f"generator_n{n}"), args.save_generator_ckpt, extra={
            "training_budget": f"{generators[n]['global_step']} steps in {args.generator_cpu_hours:g} CPU-hours "
                               f"(one thread) on {n} head phantoms at 2 mm seen at 4 mm: benchmarks/augmentation_utility.py"})
    helps = {n: {arm: next(r["mae_hu"] for r in rows if r["n_real"] == n and r["arm"] == arm) for arm in ARMS}
             for n in args.n_real}
    payload = {"n_real": args.n_real, "synthetic_per_arm": args.synthetic, "test_subjects": args.test_subjects,
               "generator_cpu_hours": args.generator_cpu_hours, "downstream_cpu_hours": args.downstream_cpu_hours,
               "steps": args.steps, "rows": rows, "generators": generators, "synthetic_data": described,
               "synthesis_speed": synth_speed, "png": str(png.relative_to(REPO)),
               "synthetic_helps": {str(n): bool(v["real+synthetic"] < v["real"]) for n, v in helps.items()}}
    write_result("augmentation_utility", json.loads(json.dumps(payload, default=float)),
                 markdown(rows, described, synth_speed, args), update_page=not args.no_readme)
    print(json.dumps(payload["synthetic_helps"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
