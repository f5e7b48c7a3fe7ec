"""MRI->CT where it is hard (issue 30): regression against residual diffusion on head phantom v2, with intervals
calibrated out of sample, the distribution-free checks, what diffusion is for, and statistics over subjects.

1. Writes v2 phantoms (``sci-diffusion phantom --version 2``; other seeds, other subjects): ``--subjects-train``
   (t1 contrast family; ``--val-subjects`` of them validate), ``--subjects-calibration`` (t1) that no model trains
   on, and ``--subjects-test`` for each test set: *in-domain* (t1) and *held-out contrast* (the t2 family, never
   drawn in training).
2. Trains the regression (two legs) and the residual model on its first leg (configs/medical/mri2ct_v2_*.yaml),
   each for ``2 x --budget-cpu-hours`` (the residual model's counting its regression), as
   ``benchmarks/mri2ct_phantom.py`` does; or, with ``--checkpoint NAME=CKPT``, evaluates trained checkpoints.
3. Translates every calibration and test subject with ``translate``'s own code (``translate_file``): the regression
   once, the residual model with ``--samples`` K samples (DDIM ``--steps``), writing the mean, the std and the K
   samples. ``--budget-minutes`` bounds this wall-clock time: a subject that would start after it is skipped and
   listed (a row then has fewer subjects, which it says).
4. Fits each model's split-conformal interval calibration on the calibration subjects (``evaluate mri2ct
   --calibration-out``) and scores each test set with it (``--calibration``, ``--interval``), with per-subject
   rows, bootstrap 95 % intervals on every mean, paired Wilcoxon tests for every comparison the targets make,
   and the targets' verdicts.

    python benchmarks/mri2ct_v2.py --budget-cpu-hours 0.5 --subjects-test 12 --budget-minutes 600
    python benchmarks/mri2ct_v2.py --checkpoint regression=R.ckpt --checkpoint residual=S.ckpt --subjects-test 12
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"regression": REPO / "configs/medical/mri2ct_v2_regression.yaml",
           "residual": REPO / "configs/medical/mri2ct_v2_residual.yaml"}
# Each set: its contrast families as (family, seed offset, SynthRAD centre letter of its ids). The calibration
# pools the training family with a third one (pd) that neither training nor testing sees, so that the intervals
# account for a change of scanner family; the held-out test family (t2) stays unseen by both.
PHANTOM_SETS: dict[str, tuple[tuple[str, int, str], ...]] = {
    "train": (("t1", 0, "A"),), "calibration": (("t1", 1, "A"), ("pd", 4, "C")), "in-domain": (("t1", 2, "A"),),
    "held-out contrast": (("t2", 3, "A"),)}
TEST_SETS = ("in-domain", "held-out contrast")
FLOOR = "registration floor"  # the CT moved with the MR's misregistration: what reading the MR perfectly gives


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-cpu-hours", type=float, help="the unit of training (each model: 2 units)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=CKPT",
                   help="evaluate this trained checkpoint (repeatable; NAME regression or residual) instead of training")
    p.add_argument("--subjects-train", type=int, default=20)
    p.add_argument("--val-subjects", type=int, default=2)
    p.add_argument("--subjects-calibration", type=int, default=6, help="subjects the conformal calibration is fitted on")
    p.add_argument("--subjects-test", type=int, default=12, help="subjects per test set (issue 30: at least 12)")
    p.add_argument("--spacing", type=float, default=2.0)
    p.add_argument("--samples", type=int, default=8, help="K of the residual model")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps of the residual model")
    p.add_argument("--interval", type=float, default=0.9, help="the calibrated interval's coverage")
    p.add_argument("--budget-minutes", type=float, default=600.0,
                   help="wall-clock budget of all translation (step 3): no subject starts after it")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    p.add_argument("--work-dir", default="runs/benchmarks/mri2ct_v2")
    p.add_argument("--result-name", default="mri2ct_v2")
    p.add_argument("--out", help="the results JSON (default: benchmarks/results/<--result-name>.json)")
    p.add_argument("--no-readme", action="store_true", help="do not touch docs/results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-arg", action="append", default=[], help="extra LightningCLI argument for every training")
    args = p.parse_args(argv)
    args.out = args.out or f"benchmarks/results/{args.result_name}.json"
    if not args.checkpoint and args.budget_cpu_hours is None:
        p.error("give --budget-cpu-hours (to train), or --checkpoint NAME=CKPT (to evaluate trained models).")
    if args.samples < 2 or args.subjects_calibration < 1 or args.subjects_test < 2:
        p.error("--samples needs 2 or more, --subjects-calibration 1 or more, --subjects-test 2 or more.")
    return args


def ensure_v2_phantoms(folder: Path, subjects: int, spacing: float, seed: int, contrast: str, centre: str = "A") -> None:
    """Write ``subjects`` v2 phantoms into ``folder`` unless it already holds exactly those."""
    from sci_diffusion_medical.data.phantom_v2 import write_phantom_dataset_v2

    meta = folder / "dataset.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        if (m.get("version") == 2 and len(m["subjects"]) == subjects and m["seed"] == seed
                and m["spacing_mm"][0] == spacing and m["contrast"] == contrast and m["subjects"][0][2] == centre):
            return
        raise SystemExit(f"{folder} holds other phantoms; remove it or choose another --work-dir.")
    t = time.perf_counter()
    write_phantom_dataset_v2(folder, subjects, spacing, seed, contrast, centre=centre)
    print(f"wrote {subjects} v2 phantoms ({contrast}) to {folder} in {time.perf_counter() - t:.0f} s", flush=True)


def set_folders(work: Path, name: str) -> tuple[Path, list[Path]]:
    """A set's root (what is translated and scored: SynthRAD pairs at any depth) and one folder per contrast
    family: the root itself for one family, ``<root>/<family>`` for a pooled set."""
    families = PHANTOM_SETS[name]
    slug = name.replace(" ", "_")
    if len(families) == 1:
        root = work / f"phantoms_{slug}"
        return root, [root]
    root = work / f"phantoms_{slug}_{'_'.join(family for family, _, _ in families)}"
    return root, [root / family for family, _, _ in families]


def write_phantom_sets(work: Path, counts: dict[str, int], spacing: float, seed: int) -> dict[str, Path]:
    """Each set named in ``counts`` (``PHANTOM_SETS`` keys) with that many subjects per contrast family, written under
    ``work`` unless already there (``ensure_v2_phantoms``); returns each set's root."""
    roots = {}
    for name, count in counts.items():
        roots[name], folders = set_folders(work, name)
        for folder, (contrast, offset, centre) in zip(folders, PHANTOM_SETS[name]):
            ensure_v2_phantoms(folder, count, spacing, seed + offset, contrast, centre)
    return roots


def write_registration_floor(set_name: str, root: Path, folder: Path, args: argparse.Namespace) -> None:
    """Each subject of a one-family test set redrawn from its seed and its CT as the MR sees it
    (``phantom_v2.ct_as_the_mr_sees_it``) written as its prediction ``<folder>/<id>.nii.gz``; the redrawn CT must
    be the one on disk (the same generator and seed)."""
    import numpy as np

    from sci_diffusion_medical.data.pairs import find_synthrad_pairs
    from sci_diffusion_medical.data.phantom_v2 import ct_as_the_mr_sees_it, make_head_phantom_v2
    from sci_diffusion_medical.io.images import read_volume
    from sci_diffusion_medical.io.nifti import save_volume

    (contrast, offset, _), = PHANTOM_SETS[set_name]
    folder.mkdir(parents=True, exist_ok=True)
    for i, pair in enumerate(find_synthrad_pairs(root), start=1):
        subject = make_head_phantom_v2(np.random.default_rng([args.seed + offset, i]), args.spacing, contrast)
        ct, _ = read_volume(pair["ct"])
        if not np.array_equal(ct, subject.ct):
            raise SystemExit(f"{pair['ct']} is not subject {i} of seed {args.seed + offset}; remove {root}.")
        save_volume(ct_as_the_mr_sees_it(subject), subject.affine, folder / f"{pair['id']}.nii.gz",
                    description=f"SYNTHETIC registration floor {pair['id']}")


def models(args: argparse.Namespace, work: Path, train_dir: Path) -> dict[str, dict[str, Any]]:
    """``{"regression": facts, "residual": facts}``: trained here (``mri2ct_phantom.train_all`` with the v2 configs)
    or given (``--checkpoint``); each with its checkpoint and budget."""
    from mri2ct_phantom import collect_training, given_checkpoints, train_all

    if args.checkpoint:
        facts = given_checkpoints(args.checkpoint)
        missing = {"regression", "residual"} - {f["kind"] for f in facts.values()}
        if missing or len(facts) != 2:
            raise SystemExit("--checkpoint takes one regression and one residual checkpoint.")
        return {f["kind"]: f for f in facts.values()}
    facts = train_all(args, train_dir, work, configs=CONFIGS)
    return collect_training(work, facts, args.budget_cpu_hours, models=tuple(CONFIGS))


def translate_set(module, kind: str, pairs: list[dict], folder: Path, args: argparse.Namespace,
                  deadline: float) -> dict[str, Any]:
    """Translate ``pairs`` into ``folder`` as ``translate`` would (``<id>.nii.gz``; a residual model also
    ``<id>_std`` and ``<id>_samples``), until ``deadline``; ``{"seconds": {id: s}, "skipped": [ids]}``."""
    from sci_diffusion_medical.translation.options import TranslationOptions
    from sci_diffusion_medical.translation.translate import translate_file

    folder.mkdir(parents=True, exist_ok=True)
    k = 1 if kind == "regression" else args.samples
    out: dict[str, Any] = {"seconds": {}, "skipped": []}
    for pair in pairs:
        pid = pair["id"]
        if time.perf_counter() > deadline:
            out["skipped"].append(pid)
            continue
        options = TranslationOptions(samples=k, steps=args.steps, batch_size=args.batch_size, progress=False,
                                     uncertainty=None if k == 1 else folder / f"{pid}_std.nii.gz",
                                     samples_out=None if k == 1 else folder / f"{pid}_samples.nii.gz", device="cpu")
        info = translate_file(pair["mr"], folder / f"{pid}.nii.gz", mask=pair["mask"], options=options, module=module)
        out["seconds"][pid] = info["seconds"]
        print(f"  {folder.parent.name}/{folder.name} {pid}: {info['seconds']:.1f} s (K = {k})", flush=True)
    return out


def registration_floor_row(set_name: str, root: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The registration floor of a test set (``write_registration_floor``) scored as a model's row (K = 1)."""
    from sci_diffusion_medical.evaluation.directory import evaluate_directory

    folder = work / "predictions" / set_name.replace(" ", "_") / "registration_floor"
    write_registration_floor(set_name, root, folder, args)
    report = evaluate_directory(folder, root, folder / "metrics.json")
    return make_row(set_name, FLOOR, {"report": report, "translation": {"seconds": {}, "skipped": []}}, 1)


def evaluate_model(name: str, fact: dict, sets: dict[str, Path], work: Path, args: argparse.Namespace,
                   deadline: float, test_sets: tuple[str, ...] = TEST_SETS) -> dict[str, Any]:
    """One model through steps 3-4: translate the calibration and ``test_sets`` subjects, fit the calibration on the
    first, score the others with it; ``{set: {"report": evaluate_directory's, "translation": translate_set's}}``.
    ``name`` names its prediction folders and calibration file under ``work``."""
    import torch

    from sci_diffusion_medical.data.pairs import find_synthrad_pairs
    from sci_diffusion_medical.evaluation.directory import evaluate_directory
    from sci_diffusion_medical.translation.model import load_translation_model

    torch.set_num_threads(args.eval_threads)
    module = load_translation_model(fact["checkpoint"], device="cpu")
    kind = fact["kind"] if "kind" in fact else name
    out: dict[str, Any] = {}
    calibration = work / "calibration" / f"{name}.json"
    for set_name in ("calibration", *test_sets):
        folder = work / "predictions" / set_name.replace(" ", "_") / name
        done = translate_set(module, kind, find_synthrad_pairs(sets[set_name]), folder, args, deadline)
        if not done["seconds"]:
            out[set_name] = {"translation": done, "report": None}
            continue
        fit = set_name == "calibration"
        report = evaluate_directory(folder, sets[set_name], folder / "metrics.json", allow_missing=True,
                                    calibration=None if fit or not calibration.is_file() else calibration,
                                    calibration_out=calibration if fit else None, interval=args.interval)
        out[set_name] = {"translation": done, "report": report}
    return out


def per_subject(report: dict | None, key: str) -> dict[str, float]:
    """``{id: value}`` of one (dotted) metric from a report's patient rows; NaN where a patient lacks it."""
    if report is None:
        return {}
    values = {}
    for pid, scores in report["patients"].items():
        value: Any = scores
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        values[pid] = float(value) if isinstance(value, (int, float)) and value is not None else math.nan
    return values


ROW_METRICS = {"mae_hu": "mae", "bone_mae_hu": "tissue_mae.bone", "sinus_mae_hu": "structure_mae.sinuses",
               "ambiguous": "ambiguous.bone_and_air", "ambiguous_samples": "samples.ambiguous_samples.bone_and_air",
               "ambiguous_ct": "ambiguous_ct.bone_and_air", "gradient_ratio": "texture.gradient_ratio",
               "gradient_ratio_sample": "samples.texture_sample.gradient_ratio", "interval_coverage": "interval.coverage",
               "interval_width_hu": "interval.mean_width_hu",
               "rank_chi2": "samples.rank_histogram.chi2", "minmax_coverage": "samples.minmax_coverage",
               "crps_hu": "samples.crps"}


def make_row(set_name: str, name: str, result: dict, k: int) -> dict[str, Any]:
    """A table row: each metric's mean over subjects with its bootstrap 95 % interval, and the per-subject values."""
    from sci_diffusion_medical.evaluation.statistics import mean_with_interval

    report = result["report"]
    row: dict[str, Any] = {"test_set": set_name, "model": name, "samples": k, "skipped": result["translation"]["skipped"],
                           "subjects": 0 if report is None else report["n_patients"],
                           "seconds_per_volume": mean_with_interval(list(result["translation"]["seconds"].values())),
                           "per_subject": {}}
    for column, key in ROW_METRICS.items():
        values = per_subject(report, key)
        row["per_subject"][column] = values
        row[column] = mean_with_interval(list(values.values()))
    return row


def comparisons(rows: list[dict]) -> list[dict[str, Any]]:
    """The paired Wilcoxon tests behind every "A beats B" the targets make, on the subjects both rows scored:
    residual against regression on MAE, sinus MAE and ambiguous voxels (its samples against the regression), per
    test set."""
    from sci_diffusion_medical.evaluation.statistics import paired_comparison

    out = []
    by = {(r["test_set"], r["model"]): r for r in rows}
    for set_name in TEST_SETS:
        a, b = by.get((set_name, "residual")), by.get((set_name, "regression"))
        if a is None or b is None:
            continue
        for metric, a_column in (("mae_hu", "mae_hu"), ("sinus_mae_hu", "sinus_mae_hu"),
                                 ("ambiguous", "ambiguous_samples")):
            ids = sorted(set(a["per_subject"][a_column]) & set(b["per_subject"][metric]))
            if len(ids) < 2:
                continue
            test = paired_comparison([a["per_subject"][a_column][i] for i in ids],
                                     [b["per_subject"][metric][i] for i in ids])
            out.append({"test_set": set_name, "metric": metric, "a": f"residual ({a_column})", "b": "regression", **test})
    return out


def targets(rows: list[dict], interval: float) -> dict[str, Any]:
    """Issue 30's targets, each with the numbers it was judged on (``None`` where a row is missing)."""
    by = {(r["test_set"], r["model"]): r for r in rows}

    def mean(set_name: str, model: str, column: str) -> float | None:
        row = by.get((set_name, model))
        return None if row is None else row[column]["mean"]

    out: dict[str, Any] = {}
    res, reg = mean("in-domain", "residual", "mae_hu"), mean("in-domain", "regression", "mae_hu")
    out["residual_mae_within_5pct_of_regression"] = None if None in (res, reg) else {"ratio": res / reg, "met": res <= 1.05 * reg}
    for set_name in TEST_SETS:
        cov = mean(set_name, "residual", "interval_coverage")
        out[f"interval_{interval:g}_covers_87_93pct ({set_name})"] = None if cov is None else {
            "coverage": cov, "met": 0.87 <= cov <= 0.93}
    for model in ("regression", "residual"):
        held, home = mean("held-out contrast", model, "mae_hu"), mean("in-domain", model, "mae_hu")
        sinus = mean("held-out contrast", model, "sinus_mae_hu")
        out[f"held_out_mae_within_1.3x ({model})"] = None if None in (held, home) else {"ratio": held / home,
                                                                                     "met": held <= 1.3 * home}
        out[f"held_out_sinus_mae_at_most_300 ({model})"] = None if sinus is None else {
            "sinus_mae_hu": sinus, "registration_floor": mean("held-out contrast", FLOOR, "sinus_mae_hu"),
            "met": sinus <= 300.0}
    samples, regression = mean("in-domain", "residual", "ambiguous_samples"), mean("in-domain", "regression", "ambiguous")
    out["ambiguous_at_most_half_the_regression"] = None if None in (samples, regression) else {
        "residual_samples": samples, "regression": regression,
        "registration_floor": mean("in-domain", FLOOR, "ambiguous"), "met": samples <= 0.5 * regression}
    seconds = mean("in-domain", "residual", "seconds_per_volume")
    out["translate_k_samples_at_most_90s"] = None if seconds is None else {"seconds": seconds, "met": seconds <= 90.0}
    return out


def interval_cell(cell: dict, fmt: str, scale: float = 1.0) -> str:
    """A table cell of a ``mean_with_interval`` value: ``mean [low, high]`` (times ``scale``), or ``-`` without one."""
    m, lo, hi = (cell.get(k) for k in ("mean", "low", "high"))
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "-"
    ci = "" if lo is None or math.isnan(lo) else f" [{scale * lo:{fmt}}, {scale * hi:{fmt}}]"
    return f"{scale * m:{fmt}}{ci}"


def markdown(rows: list[dict], tests: list[dict], verdicts: dict, args: argparse.Namespace) -> str:
    f = interval_cell
    lines = ["| test set | model | K | subjects | MAE (HU) | bone MAE | sinus MAE | ambiguous % (samples; CT) | gradient "
             f"ratio | {100 * args.interval:g} % interval covers (mean width, HU) | rank χ² | [min, max] covers | "
             "CRPS (HU) | s / volume |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ambiguous = (f"{f(r['ambiguous'], '.1f', 100)} ({f(r['ambiguous_samples'], '.1f', 100)}; "
                     f"CT {f(r['ambiguous_ct'], '.1f', 100)})")
        lines.append(f"| {r['test_set']} | {r['model']} | {r['samples']} | {r['subjects']} | {f(r['mae_hu'], '.1f')} | "
                     f"{f(r['bone_mae_hu'], '.0f')} | {f(r['sinus_mae_hu'], '.0f')} | {ambiguous} | "
                     f"{f(r['gradient_ratio'], '.2f')} | {f(r['interval_coverage'], '.1f', 100)} "
                     f"({f(r.get('interval_width_hu', {}), '.0f')}) | {f(r['rank_chi2'], '.0f')} | "
                     f"{f(r['minmax_coverage'], '.1f', 100)} | {f(r['crps_hu'], '.1f')} | {f(r['seconds_per_volume'], '.1f')} |")
    k = args.samples
    text = "\n".join(lines) + (f"\n\nThe {FLOOR} rows score each test subject's CT moved with its MR's "
                               "misregistration (phantom_v2.ct_as_the_mr_sees_it): what a model that read the MR's "
                               "anatomy perfectly would predict, so the error the misregistration alone leaves."
                               f"\n\nMeans over subjects with bootstrap 95 % intervals. [min, max] of K = {k} samples covers "
                               f"{100 * (k - 1) / (k + 1):.1f} % when calibrated; a flat rank histogram has χ² near {k} "
                               "per volume (voxels are not independent: compare, do not test).")
    text += "\n\nPaired Wilcoxon tests over subjects (A - B; lower is better):\n" + "\n".join(
        f"- {t['test_set']}, {t['metric']}: {t['a']} - {t['b']} = {t['mean_difference']:.3g} "
        f"[{t['difference_interval'][0]:.3g}, {t['difference_interval'][1]:.3g}], p = {t['p_value']:.3g} (n = {t['n']}): "
        + ("A beats B" if t["a_beats_b"] else "B beats A" if t["b_beats_a"] else "no difference shown") for t in tests)
    text += "\n\nTargets (issue 30):\n" + "\n".join(
        f"- {name}: " + ("not measured" if v is None else ("met" if v["met"] else "**not met**") + " "
                         + json.dumps({k2: round(x, 4) if isinstance(x, float) else x for k2, x in v.items() if k2 != "met"}))
        for name, v in verdicts.items())
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from reporting import write_result

    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    counts = {"train": args.subjects_train, "calibration": args.subjects_calibration,
              **{name: args.subjects_test for name in TEST_SETS}}
    sets = {name: set_folders(work, name)[0] for name in PHANTOM_SETS}
    write_phantom_sets(work, {n: c for n, c in counts.items() if n != "train" or not args.checkpoint}, args.spacing,
                       args.seed)  # given checkpoints need no training phantoms
    facts = models(args, work, sets["train"])
    rows = [registration_floor_row(set_name, sets[set_name], work, args) for set_name in TEST_SETS]
    deadline = time.perf_counter() + 60.0 * args.budget_minutes
    for name in ("regression", "residual"):
        results = evaluate_model(name, facts[name], sets, work, args, deadline)
        k = 1 if name == "regression" else args.samples
        rows += [make_row(set_name, name, results[set_name], k) for set_name in TEST_SETS]
    tests, verdicts = comparisons(rows), targets(rows, args.interval)
    payload = {"started_utc": started, "data": {"generator": "sci_diffusion_medical.data.phantom_v2 (SYNTHETIC)",
                                                "spacing_mm": args.spacing, "sets": {n: [{"contrast": c, "seed": args.seed + o,
                                                "centre": centre, "subjects": counts[n]} for c, o, centre in families]
                                                for n, families in PHANTOM_SETS.items()}},
               "training": facts, "evaluation": {"samples": args.samples, "steps": args.steps, "interval": args.interval,
                                                 "budget_minutes": args.budget_minutes, "threads": args.eval_threads},
               "rows": rows, "paired_tests": tests, "targets": verdicts}
    text = (f"SYNTHETIC head phantoms v2 at {args.spacing:g} mm ({args.subjects_test} test subjects per set; intervals "
            f"calibrated on {args.subjects_calibration} other subjects of each of the t1 and pd families; translation "
            "timed on one process of "
            f"{args.eval_threads} threads).\n\n" + markdown(rows, tests, verdicts, args))
    from mri2ct_phantom import json_safe

    write_result(args.result_name, json_safe(payload), text, out=Path(args.out), update_page=not args.no_readme)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
