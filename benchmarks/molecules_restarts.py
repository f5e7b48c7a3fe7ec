"""Restart sampling, polishing and the geometry of generated molecules (issue 28's GFN2-xTB target).

The same molecules (sizes and per-molecule seeds from ``--seed``) are drawn by one checkpoint (default: the bundled
default of ``sample molecules``) with ``dpmpp2m_sde`` at ``--steps``, once plainly and once per setting. A setting is
``none``, restarts ``K@txn`` (``sci_diffusion.restart``: each finished molecule carried forward to ``t`` and sampled
back in ``n`` steps, ``K`` times; ``sample molecules --restarts K --restart-time t --restart-steps n``), polishing
``pN@t`` (``sci_diffusion.polish``: the denoiser applied ``N`` times to the coordinates at time ``t``; ``sample
molecules --polish N --polish-time t``), or restarts then polishing, ``K@txn+pN@t``; a setting ending in ``+expert``
lets ``--expert`` (a low-noise expert, ``sample molecules --expert``) answer the network calls at its times. Each
setting is scored with EDM's metric
and MiDi's (its own bonds) over ``--num`` molecules, and with the geometry check, the GFN2-xTB relaxation energy
(``evaluation/geometry.py``), over the first ``--xtb-num``, beside the same check on as many real QM9 molecules
(the floor; issue 28's target: a median within 3 kcal/mol of it).

A setting starts from the same main pass as the plain row (the same seeds), so the drops pair molecule by
molecule: on the molecules scorable in both, a one-sided Wilcoxon signed-rank test (the setting lowers the drop) and a
bootstrap 95 % interval of the change of the median drop (2,000 resamples of the molecules).

Writes benchmarks/results/<--result-name>.json (per-molecule drops included), its table in
docs/results/molecules_recipes.md and the README row "Geometry of generated molecules".

    python benchmarks/molecules_restarts.py --num 1000 --xtb-num 200 --settings none,2@0.15x10,p20@0.02
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import wilcoxon

from sci_diffusion.checkpoints import bundled_checkpoint, file_sha256, load_module, read_checkpoint
from sci_diffusion.errors import UserError
from sci_diffusion.polish import Polish
from sci_diffusion.restart import Restarts
from sci_diffusion_molecules.data.qm9 import train_smiles
from sci_diffusion_molecules.data.qm9_bonds import train_bond_smiles
from sci_diffusion_molecules.evaluation.geometry import (
    XtbUnavailableError,
    qm9_relaxation_floor,
    relax_molecule,
    summarise,
    tblite_calculator_class,
)
from sci_diffusion_molecules.evaluation.metrics import evaluate_generated
from sci_diffusion_molecules.generation.bond_sampling import draw_molecules
from sci_diffusion_molecules.generation.sampling import Expert, draw_atom_counts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import replace_readme_row, saved_result, write_result  # noqa: E402

README_ROW = "Geometry of generated molecules (GFN2-xTB relaxation energy, issue 28)"
TARGET_KCAL = 3.0  # issue 28: the median drop within 3 kcal/mol of real QM9 geometries'
METRICS = ("atom_stability", "molecule_stability", "validity", "uniqueness", "novelty")


Setting = tuple[Restarts | None, Polish | None, bool]


def parse_setting(text: str) -> Setting:
    """``none``, ``K@TxN`` (K restarts from time T, N steps back each), ``pN@T`` (N polishing iterations at time T),
    ``K@TxN+pN@T``, any of them ``+expert``, as ``(restarts, polish, with the expert)``, None when absent."""
    restarts = polish = None
    parts = [] if text == "none" else text.split("+")
    expert = "expert" in parts
    try:
        for part in (p for p in parts if p != "expert"):
            if part.startswith("p"):
                iterations, t = part[1:].split("@")
                polish = Polish(int(iterations), float(t))
            else:
                count, rest = part.split("@")
                t_max, steps = rest.split("x")
                restarts = Restarts(int(count), float(t_max), int(steps))
    except ValueError as err:
        raise SystemExit(f"--settings: {text!r} is not 'none', K@TxN, pN@T or K@TxN+pN@T, e.g. 2@0.15x10+p20@0.02 "
                         f"({err}).") from None
    return restarts, polish, expert


def setting_name(setting: Setting) -> str:
    restarts, polish, expert = setting
    parts = ([f"{restarts.count}@{restarts.t_max:g}x{restarts.steps}"] if restarts else []) + (
        [f"p{polish.iterations}@{polish.t:g}"] if polish else []) + (["expert"] if expert else [])
    return "+".join(parts) or "none"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", help="a molecules checkpoint (default: the bundled default of sample molecules)")
    p.add_argument("--num", type=int, default=1000, help="molecules per setting")
    p.add_argument("--steps", type=int, default=50, help="dpmpp2m_sde steps of the main pass")
    p.add_argument("--settings", default="none,2@0.15x10",
                   help="comma-separated: none, K@TxN, pN@T or K@TxN+pN@T, each optionally +expert")
    p.add_argument("--expert", help="a low-noise expert checkpoint for the +expert settings (sample molecules --expert)")
    p.add_argument("--xtb-num", type=int, default=200, help="molecules relaxed with GFN2-xTB per setting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--budget-minutes", type=float, default=120.0, help="no new setting starts after this")
    p.add_argument("--result-name", default="molecules_restarts")
    p.add_argument("--from-json", action="store_true", help="only re-render the saved result's page and README row")
    p.add_argument("--no-readme", action="store_true")
    args = p.parse_args(argv)
    args.settings = [parse_setting(s.strip()) for s in args.settings.split(",")]
    if args.settings[0] != (None, None, False):
        raise SystemExit("--settings must start with none: the other rows are paired with the plain one.")
    if any(expert for _, _, expert in args.settings) and not args.expert:
        raise SystemExit("A +expert setting needs --expert CKPT, a low-noise expert of the model.")
    return args


def score_setting(module, counts: list[int], setting: Setting, args: argparse.Namespace,
                  references: tuple[frozenset, frozenset], expert: Expert | None) -> dict:
    """Draw the run's molecules with ``setting`` (restarts, polish, the expert) and score them (metrics, speed,
    per-molecule xTB drops)."""
    restarts, polish, with_expert = setting
    start = time.perf_counter()
    molecules = list(draw_molecules(module, counts, "dpmpp2m_sde", args.steps, torch.Generator().manual_seed(args.seed),
                                    args.batch_size, precision="fp32", restarts=restarts, polish=polish,
                                    expert=expert if with_expert else None))
    seconds = time.perf_counter() - start
    metrics = evaluate_generated(molecules, *references)
    relaxations = [relax_molecule(m[0], m[1]) for m in molecules[:args.xtb_num]]
    geometry = summarise(relaxations)
    passes = args.steps + sum(plan.function_evaluations() for plan in (restarts, polish) if plan is not None)
    row = {"setting": setting_name(setting), "passes_per_molecule": passes,
           "molecules": len(molecules), "molecules_per_second": round(len(molecules) / seconds, 2),
           **{k: metrics[k] for k in METRICS},
           "generated_bonds": {k: metrics["generated_bonds"][k] for k in ("molecule_stability", "validity")}
           if "generated_bonds" in metrics else None,
           "xtb": {k: v for k, v in geometry.items() if k not in ("method", "convergence")},
           "drops_kcal_per_mol": [r.drop_kcal_per_mol for r in relaxations]}
    print(f"  {row['setting']}: {100 * row['molecule_stability']:.1f} % stable, {100 * row['validity']:.1f} % valid, "
          f"xTB median drop {geometry['median_drop_kcal_per_mol']:.2f} kcal/mol, {row['molecules_per_second']} mol/s",
          flush=True)
    return row


def paired_change(plain: list[float | None], restarted: list[float | None], seed: int = 0) -> dict:
    """The change of the drop on the molecules scorable in both: median of ``restarted`` (any setting) minus median
    of ``plain`` with a bootstrap 95 % interval, and the one-sided Wilcoxon p-value that the setting lowers it."""
    pairs = np.array([(a, b) for a, b in zip(plain, restarted) if a is not None and b is not None])
    if len(pairs) < 10:
        return {"pairs": len(pairs)}
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(pairs), size=(2000, len(pairs)))
    changes = np.median(pairs[picks, 1], axis=1) - np.median(pairs[picks, 0], axis=1)
    return {"pairs": len(pairs), "median_change": float(np.median(pairs[:, 1]) - np.median(pairs[:, 0])),
            "interval_95": [float(np.percentile(changes, 2.5)), float(np.percentile(changes, 97.5))],
            "wilcoxon_p_lower": float(wilcoxon(pairs[:, 1], pairs[:, 0], alternative="less").pvalue)}


def measure(args: argparse.Namespace) -> dict:
    try:
        tblite_calculator_class()  # as relaxation_summary does: fail before sampling, not after the first setting
    except XtbUnavailableError as err:
        raise SystemExit(str(err)) from None
    torch.set_num_threads(args.threads)
    ckpt = Path(args.ckpt or bundled_checkpoint("sci_diffusion_molecules", "unconditional"))
    module = load_module(str(ckpt), domain="molecules").eval()
    counts = draw_atom_counts(module.atom_count_histogram, args.num, torch.Generator().manual_seed(args.seed))
    bonded = getattr(module, "model_kind", "") == "bonds"
    references = (train_smiles(), train_bond_smiles() if bonded else None)
    try:
        expert = Expert.of(module, load_module(args.expert, domain="molecules")) if args.expert else None
    except UserError as err:
        raise SystemExit(str(err)) from None
    started, rows = time.perf_counter(), []
    for setting in args.settings:
        if rows and time.perf_counter() - started > 60 * args.budget_minutes:
            print(f"  {setting_name(setting)}: not run, the {args.budget_minutes:g}-minute budget is spent")
            continue
        rows.append(score_setting(module, counts, setting, args, references, expert))
        if len(rows) > 1:
            rows[-1]["paired_with_plain"] = paired_change(rows[0]["drops_kcal_per_mol"], rows[-1]["drops_kcal_per_mol"])
    floor = qm9_relaxation_floor(args.xtb_num)
    return {"checkpoint": str(ckpt), "checkpoint_sha256": file_sha256(ckpt),
            **(expert_record(args.expert, expert) if expert else {}),
            "training_budget": read_checkpoint(ckpt)["sci_diffusion"].get("training_budget"),
            "steps": args.steps, "seed": args.seed, "xtb_num": args.xtb_num, "rows": rows,
            "qm9_floor": {k: v for k, v in floor.items() if k not in ("method", "convergence")}}


def expert_record(path: str, expert: Expert) -> dict:
    """The result's fields on the +expert rows' expert: its file, hash, time and training budget (its own record)."""
    record = expert.module.checkpoint_record
    return {"expert": path, "expert_sha256": expert.module.checkpoint_hash, "expert_below": expert.below,
            "expert_training_budget": record.get("training_budget"), "expert_cpu_hours": record.get("cpu_hours")}


def verdict(row: dict, floor: float) -> str:
    median = row["xtb"]["median_drop_kcal_per_mol"]
    return "-" if median is None else ("met" if median - floor <= TARGET_KCAL else "not met")


def expert_line(result: dict) -> str:
    """The caption's sentence on the +expert rows' low-noise expert, if the run had one."""
    if "expert" not in result:
        return ""
    return (f" The +expert rows: the low-noise expert `{result['expert']}` (sha256 {result['expert_sha256']}) answers at "
            f"t <= {result['expert_below']:g}; its budget: {result['expert_training_budget']}.")


def markdown(result: dict) -> str:
    floor = result["qm9_floor"]["median_drop_kcal_per_mol"]
    lines = [f"Restarts and polishing on `{result['checkpoint']}` (sha256 {result['checkpoint_sha256']}), dpmpp2m_sde "
             f"{result['steps']} steps, the same {result['rows'][0]['molecules']:,} molecules per setting (seed "
             f"{result['seed']}); GFN2-xTB on the first {result['xtb_num']}. Real QM9 (the floor): median drop "
             f"{floor:.2f} kcal/mol (p90 {result['qm9_floor']['p90_drop_kcal_per_mol']:.2f}).{expert_line(result)}",
             "",
             "| setting (restarts K@t x n, polish pN@t) | network passes | molecules/s | stable % | valid % "
             "| own bonds: stable / valid % | xTB drop median / p90 (unscorable) | median - real | target (<= 3) "
             "| change vs none (95 %), Wilcoxon p |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        x, own, pair = r["xtb"], r.get("generated_bonds") or {}, r.get("paired_with_plain") or {}
        change = (f"{pair['median_change']:+.2f} [{pair['interval_95'][0]:+.2f}, {pair['interval_95'][1]:+.2f}], "
                  f"p = {pair['wilcoxon_p_lower']:.2g} ({pair['pairs']} pairs)" if "median_change" in pair else "-")
        lines.append(f"| {r['setting']} | {r['passes_per_molecule']} | {r['molecules_per_second']} | "
                     f"{100 * r['molecule_stability']:.1f} | {100 * r['validity']:.1f} | "
                     f"{100 * own.get('molecule_stability', float('nan')):.1f} / {100 * own.get('validity', float('nan')):.1f} | "
                     f"{x['median_drop_kcal_per_mol']:.2f} / {x['p90_drop_kcal_per_mol']:.2f} "
                     f"({100 * x['unscorable_fraction']:.0f} % of {x['molecules']}) | "
                     f"{x['median_drop_kcal_per_mol'] - floor:+.2f} | {verdict(r, floor)} | {change} |")
    return "\n".join(lines)


def readme_budget(result: dict) -> str:
    """The README row's training cell: the bundled default's, and the +expert rows' expert's when there is one."""
    if "expert" not in result:
        return "none beyond the bundled default's"
    hours = result.get("expert_cpu_hours")  # (results from before it was recorded: the checkpoint's own record)
    if hours is None:
        hours = read_checkpoint(Path(result["expert"]))["sci_diffusion"].get("cpu_hours")
    return (f"the bundled default's; the +expert rows' low-noise expert (`{Path(result['expert']).name}`, t <= "
            f"{result['expert_below']:g}): {hours:.2f} CPU-hours more")


def readme_row(result: dict) -> str:
    floor, rows = result["qm9_floor"]["median_drop_kcal_per_mol"], result["rows"]
    cells = "; ".join(f"{'plain' if r['setting'] == 'none' else r['setting']}: "
                      f"{r['xtb']['median_drop_kcal_per_mol']:.1f} kcal/mol ({verdict(r, floor)}; "
                      f"{100 * r['molecule_stability']:.1f} % stable)" for r in rows)
    return (f"| {README_ROW} | median drop on relaxation, the bundled default, {result['steps']} steps, first "
            f"{result['xtb_num']} of {rows[0]['molecules']:,}: {cells}; real QM9 {floor:.1f} (target: within 3) | "
            f"Megalodon 3.17 kcal/mol, SemlaFlow 32.96 (GEOM-Drugs) | {readme_budget(result)} | "
            f"[{result['benchmark']}](docs/results/molecules_recipes.md) |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        result, provenance = saved_result(args.result_name)
    else:
        result, provenance = measure(args), None
    path = write_result(args.result_name, {k: v for k, v in result.items() if k not in ("benchmark", "command",
                        "machine", "date")}, markdown(result), update_page=not args.no_readme, provenance=provenance)
    print(markdown(result))
    if not args.no_readme:
        result["benchmark"] = args.result_name
        replace_readme_row(README_ROW, readme_row(result))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
