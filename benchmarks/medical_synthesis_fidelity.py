"""Does a synthetic medical data set look like real subjects? The fidelity measures of issue 31 §3.

A synthetic data set (``--synthetic DIR``, or ``--num`` subjects written here by ``sci-diffusion synthesize
medical`` with the bundled generator or ``--ckpt``) is measured against ``--real`` real head phantoms (phantom v2
by default, from held-out seeds no generator trained on: ``--real-seed``), both read at ``--spacing`` mm
(``sci_diffusion_medical.evaluation.fidelity.measure_dataset``):

- labels obeyed: per tissue, CT and normalised MR inside the label (median, IQR, 1-D Wasserstein distance to the
  real subjects' pooled voxels, beside the real subjects' own spread); grey matter, white matter and CSF CT
  medians within 30 HU of real, cortical bone >= 700 HU, sinus air <= -800 HU;
- anatomy: the brain's (grey + white matter) share in its largest 26-connected piece >= 0.95; label boundary
  roughness (surface-to-volume ratio per tissue) against real; no striping: the neighbouring-slice CT difference
  within 20 % of real along each axis (RAS voxel order: axis 2 stacks the axial slices);
- diversity: mean pairwise SSIM of the CT (cubes of 256 mm centred on each body) within 0.1 of real subjects'.

The synthesis runs in parts of ``--chunk`` subjects (``synthesize medical --shard``); no part starts after
``--budget-minutes``, and the subjects written by then are measured (``complete`` says whether all were).

    python benchmarks/medical_synthesis_fidelity.py --real 20 --num 20 --budget-minutes 120
    python benchmarks/medical_synthesis_fidelity.py --real 20 --synthetic /data/synth_v3
"""
from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
NAME = "medical_synthesis_fidelity"
# --result: the generator a run measures, each with its own JSON, page block and README row
RESULTS = {"slice": (NAME, "Synthetic subjects, slice generator (issue 31 §3 fidelity against phantom v2)"),
           "latent": (f"{NAME}_latent", "Synthetic subjects, 3-D latent generator (issue 31 §3 fidelity against phantom v2)")}
AXES = ("sagittal", "coronal", "axial")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/medical_synthesis_fidelity"))
    p.add_argument("--synthetic", type=Path, help="a synthetic data set folder (SynthRAD layout) to measure; "
                                                  "without it, --num subjects are synthesised into the work dir")
    p.add_argument("--num", type=int, default=20, help="synthetic subjects to write (without --synthetic)")
    p.add_argument("--real", type=int, default=20, help="real phantom subjects of the reference")
    p.add_argument("--real-seed", type=int, default=3100, help="the reference phantoms' seed (held out: no "
                                                                "generator trains on it)")
    p.add_argument("--phantom-version", type=int, choices=(1, 2), default=2, help="the reference phantoms")
    p.add_argument("--spacing", type=float, default=4.0, help="isotropic voxel size both sets are measured at (mm)")
    p.add_argument("--ckpt", help="paired synthesis checkpoint (default: the bundled one)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps of synthesize medical")
    p.add_argument("--sampler", default="ddpm", help="sampler of synthesize medical")
    p.add_argument("--seed", type=int, default=0, help="synthesis seed and the Wasserstein subsamples' seed")
    p.add_argument("--chunk", type=int, default=5, help="synthetic subjects per synthesis part")
    p.add_argument("--samples", type=int, default=20_000, help="voxels per tissue and set for a Wasserstein distance")
    p.add_argument("--budget-minutes", type=float, default=120.0, help="no synthesis part starts after this")
    p.add_argument("--result", choices=tuple(RESULTS), default="slice",
                   help="which generator's result this run is (its JSON, page block and README row): slice (the "
                        "bundled default) or latent (the 3-D latent generator, --ckpt or --synthetic)")
    p.add_argument("--json", type=Path, help="the result's JSON (default benchmarks/results/<result name>.json)")
    p.add_argument("--no-readme", action="store_true", help="do not touch docs/results or the README (the JSON is "
                                                          "still written)")
    args = p.parse_args(argv)
    args.json = args.json or REPO / "benchmarks" / "results" / f"{RESULTS[args.result][0]}.json"
    return args


def readme_row(result: dict, generator: dict, cell: str, subjects: int) -> str:
    """The README's results row of a run: how many of the targets are met and the figures that say most."""
    targets = result["targets"]
    met = sum(bool(t["met"]) for t in targets.values())

    def value(name: str, spec: str = ".0f") -> str:
        return fmt(targets[name]["value"], spec) if name in targets else "-"

    striping = " / ".join(value(f"no_striping_{axis}", ".2f") for axis in AXES)
    ours = (f"**{met} of {len(targets)} targets met**; CT medians grey matter {value('grey_matter_ct')} HU, bone "
            f"{value('bone_ct')} HU, sinus air {value('air_ct')} HU; brain in one piece {value('brain_in_one_piece', '.3f')}; "
            f"neighbouring-slice difference / real (sagittal / coronal / axial) {striping}; CT SSIM between subjects "
            f"{value('diversity', '.2f')} ({subjects} subjects, {generator.get('sampler')} {generator.get('steps')} steps)")
    real = (f"real phantoms: grey matter {fmt(targets.get('grey_matter_ct', {}).get('real'))} HU, bone "
            f"{fmt(targets.get('bone_ct', {}).get('real'))} HU, SSIM {fmt(targets.get('diversity', {}).get('real'), '.2f')}; "
            "MAISI: downstream Dice gains of several points")
    return f"| {cell} | {ours} | {real} | {training_budget(generator)} | [{NAME}](docs/results/{NAME}.md) |"


def training_budget(generator: dict) -> str:
    """The ``training_budget`` an exported generator records (``sci-diffusion export --budget``), else ``-``."""
    from sci_diffusion.checkpoints import read_checkpoint

    path = generator.get("checkpoint")
    if not path or not Path(path).is_file():
        return "-"
    return str(read_checkpoint(path)["sci_diffusion"].get("training_budget", "-"))


def write_reference(args: argparse.Namespace) -> Path:
    """The real subjects, written once per (version, count, seed, spacing) under the work dir."""
    from sci_diffusion_medical.data.phantom import write_phantom_dataset
    from sci_diffusion_medical.data.phantom_v2 import write_phantom_dataset_v2

    folder = args.work_dir / f"real_v{args.phantom_version}_n{args.real}_seed{args.real_seed}_{args.spacing:g}mm"
    if not (folder / "dataset.json").is_file():
        write = write_phantom_dataset_v2 if args.phantom_version == 2 else write_phantom_dataset
        write(folder, args.real, args.spacing, args.real_seed)
    return folder


def synthesise(args: argparse.Namespace, deadline: float) -> tuple[Path, dict[str, Any]]:
    """``--num`` subjects in parts of ``--chunk`` (``synthesize medical --shard K/N``, one process each); a part
    already written is kept, no part starts after ``deadline``. Returns the folder and what the runs said."""
    folder = args.work_dir / f"synthetic_seed{args.seed}_{args.sampler}{args.steps}"
    parts = max(1, math.ceil(args.num / max(1, args.chunk)))
    record: dict[str, Any] = {"parts": parts, "written_parts": 0, "skipped_parts": 0, "seconds_per_subject": [],
                              "peak_rss_mb": []}
    for k in range(parts):
        out = folder / f"part{k}"
        if not (out / "dataset.json").is_file():
            if time.perf_counter() > deadline:
                record["skipped_parts"] += 1
                continue
            cmd = [sys.executable, "-m", "sci_diffusion.cli", "synthesize", "medical", "--num", str(args.num),
                   "--out", str(out), "--seed", str(args.seed), "--steps", str(args.steps), "--sampler", args.sampler,
                   "--shard", f"{k}/{parts}", *(["--ckpt", args.ckpt] if args.ckpt else [])]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"synthesize medical failed (part {k}/{parts}):\n{done.stderr[-2000:]}")
            print(done.stdout.strip(), flush=True)
            said = re.search(r"\(([\d.]+) s per subject, peak RSS (\d+) MB\)", done.stdout)
            if said:
                record["seconds_per_subject"].append(float(said.group(1)))
                record["peak_rss_mb"].append(float(said.group(2)))
        record["written_parts"] += 1
    if record["written_parts"] == 0:
        raise SystemExit("--budget-minutes was spent before any synthetic subject was written.")
    return folder, record


def generator_of(folder: Path) -> dict[str, Any]:
    """What the synthetic set's ``dataset.json`` (or its first part's) says about its generator."""
    for path in [folder / "dataset.json", *sorted(folder.glob("*/dataset.json"))]:
        if path.is_file():
            d = json.loads(path.read_text())
            return {k: d.get(k) for k in ("generator", "checkpoint", "checkpoint_sha256", "sampler", "steps",
                                          "spacing_mm", "version")}
    return {}


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def targets_table(result: dict) -> list[str]:
    lines = ["| target | synthetic | real | met |", "|---|---:|---:|:---:|"]
    for name, t in result["targets"].items():
        spec = ".0f" if name.endswith("_ct") else ".3f"
        syn, ref = fmt(t["value"], spec), fmt(t.get("real"), spec)
        if name.startswith("no_striping"):  # a ratio to real: real is 1 by definition
            syn, ref = f"{fmt(t['value'], '.2f')} ({fmt(t['synthetic_hu'])} HU)", f"1 ({fmt(t['real_hu'])} HU)"
        lines.append(f"| {name}: {t['target']} | {syn} | {ref} | {'yes' if t['met'] else '**no**'} |")
    return lines


def tissue_table(result: dict) -> list[str]:
    lines = ["| tissue | CT median (IQR), synthetic | real | CT W1 (real vs real) | MR W1 (real vs real) | "
             "roughness ratio |", "|---|---:|---:|---:|---:|---:|"]
    rough = result["anatomy"]["roughness"]
    for name, row in result["tissues"].items():
        ct, mr = row["ct"], row["mr"]

        def dist(d):
            return "-" if d is None else f"{d['median']:.0f} ({d['iqr']:.0f})"

        lines.append(f"| {name} | {dist(ct['synthetic'])} | {dist(ct['real'])} | {fmt(ct['w1'])} "
                     f"({fmt(ct['w1_real_vs_real'])}) | {fmt(mr['w1'], '.2f')} ({fmt(mr['w1_real_vs_real'], '.2f')}) | "
                     f"{fmt(rough.get(name, {}).get('ratio'), '.2f')} |")
    return lines


def markdown(result: dict, args: argparse.Namespace, generator: dict, synthesis: dict | None) -> str:
    a, d = result["anatomy"], result["diversity"]
    striping = ", ".join(f"{k.split()[0]} {fmt(v['synthetic'])} / {fmt(v['real'])} HU ({fmt(v['ratio'], '.2f')})"
                         for k, v in a["slice_difference_hu"].items())
    share = a["brain_component_share"]
    lines = [f"**Targets met: {result['targets_met']}.**", "", *targets_table(result), "", *tissue_table(result), "",
             f"Brain (grey + white matter) in its largest 26-connected piece: synthetic mean "
             f"{share['synthetic']['mean']:.3f} (min {share['synthetic']['min']:.3f}), real {share['real']['mean']:.3f}. "
             f"Label roughness (surface-to-volume, all labels): {fmt(a['roughness']['all']['synthetic'], '.3f')} / "
             f"{fmt(a['roughness']['all']['real'], '.3f')} per mm (ratio {fmt(a['roughness']['all']['ratio'], '.2f')}). "
             f"Neighbouring-slice CT difference, synthetic / real (ratio): {striping}. Diversity, mean pairwise CT SSIM: "
             f"synthetic {fmt(d['synthetic'], '.3f')}, real {fmt(d['real'], '.3f')}.",
             "", f"{len(result['subjects']['synthetic'])} synthetic subjects ({generator.get('generator') or 'unknown'}, "
                 f"{generator.get('sampler') or '?'} {generator.get('steps') or '?'} steps) against "
                 f"{len(result['subjects']['real'])} phantom v{args.phantom_version} subjects (seed {args.real_seed}), "
                 f"both at {args.spacing:g} mm; W1 on {args.samples} voxels per tissue and set, MR "
                 f"normalised per subject (0.5th / 99.5th percentiles in the body to -1 / +1)."]
    if synthesis is not None and synthesis["seconds_per_subject"]:
        lines[-1] += (f" Synthesis: {sum(synthesis['seconds_per_subject']) / len(synthesis['seconds_per_subject']):.1f} "
                      f"s per subject, peak RSS {max(synthesis['peak_rss_mb']):.0f} MB.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from reporting import replace_readme_row, write_result

    from sci_diffusion_medical.evaluation.fidelity import measure_dataset

    deadline = time.perf_counter() + 60 * args.budget_minutes
    args.work_dir.mkdir(parents=True, exist_ok=True)
    real_dir = write_reference(args)
    synthesis = None
    if args.synthetic is not None:
        synthetic_dir = args.synthetic
    else:
        synthetic_dir, synthesis = synthesise(args, deadline)
    start = time.perf_counter()
    result = measure_dataset(synthetic_dir, real_dir, args.spacing, args.samples, args.seed)
    generator = generator_of(synthetic_dir)
    payload = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "generator": generator, "synthesis": synthesis, "measure_seconds": time.perf_counter() - start,
               "complete": synthesis is None or synthesis["skipped_parts"] == 0, **result}
    text = markdown(result, args, generator, synthesis)
    name, cell = RESULTS[args.result]
    write_result(name, json.loads(json.dumps(payload, default=float)), text, out=args.json,
                 update_page=not args.no_readme)
    if not args.no_readme:
        replace_readme_row(cell, readme_row(result, generator, cell, len(result["subjects"]["synthetic"])))
    print(text)
    print(f"\nWrote {args.json}" + ("" if args.no_readme else f" and the table of docs/results/{NAME}.md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
