"""The bundled QM9 model under the EDM protocol, for several samplers, beside the published rows.

    python benchmarks/molecules_qm9.py [--num 1000] [--budget-minutes 60] [--ckpt C]
    python benchmarks/molecules_qm9.py --models edm=C1 latent=C2 [--num 10000] [--sampler S --steps N]

The first form runs the bundled EDM-style model (``--ckpt``: another atoms-only model), whose samplers
include the ODE ones. The second form compares models of any kind (the EDM-style, the GeoLDM-style latent
one, the bond-aware default, say) with one sampler setting: the EDM metric on ``--num`` molecules each
(atoms and positions alone; a bond-aware model also with MiDi's metric on its own bonds), molecules
per second, training steps per second, and for a latent model its autoencoder's reconstruction of the
QM9 test split (atom-type accuracy and coordinate RMSD). It writes
benchmarks/results/<--result-name>.json (default molecules_qm9_models) and its own table in docs/results/molecules_qm9.md.

For each sampler setting it draws ``--num`` molecules (sizes from the training histogram), scores
them with the EDM metric (novelty against the QM9 training SMILES), and records molecules per second
and peak memory (the process's peak resident set so far, from getrusage). Sampling runs the network
under bf16 autocast, as the CLI does by default; a last float32 row is the control. It also measures
training throughput (steps per second in bf16 and float32, and the data loader's own rate). Rows run in order,
cheapest first; once the rows before have measured the cost of one network evaluation, a row
that would overrun ``--budget-minutes`` draws fewer molecules and is marked ``complete: false``. Writes
benchmarks/results/molecules_qm9.json and its table in docs/results/molecules_qm9.md.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import time

import torch
from reporting import PROVENANCE, RESULTS, write_result

from sci_diffusion.checkpoints import bundled_checkpoint, load_module, read_checkpoint
from sci_diffusion.memory import keep_freed_memory
from sci_diffusion.samplers import function_evaluations
from sci_diffusion_molecules.data.datamodule import QM9DataModule
from sci_diffusion_molecules.data.qm9 import train_smiles
from sci_diffusion_molecules.data.qm9_bonds import train_bond_smiles
from sci_diffusion_molecules.evaluation.metrics import evaluate_generated, evaluate_molecules
from sci_diffusion_molecules.generation.bond_sampling import draw_molecules
from sci_diffusion_molecules.generation.sampling import draw_atom_counts, sample_molecules

# (sampler, steps, network precision). DPM-Solver++ runs in both forms: the SDE one (the CLI's
# default) and the ODE one. The last row repeats the default in float32 as a control for bf16.
SETTINGS = [("dpmpp2m_sde", 20, "bf16"), ("dpmpp2m_sde", 50, "bf16"), ("dpmpp2m", 20, "bf16"), ("dpmpp2m", 50, "bf16"),
            ("ddim", 100, "bf16"), ("ddpm", 1000, "bf16"), ("dpmpp2m_sde", 50, "fp32")]
FP32_COST_FACTOR = 4.0  # a guess at float32's cost over bf16, used only until a float32 row is measured
PUBLISHED = [  # EDM (2022) and GeoLDM (2023) as published; budgets as published (GPU-days are secondary figures)
    ("Data (QM9 itself)", "-", "-", 99.0, 95.2, 97.7, 97.7, None),
    ("EDM (2022)", "~7 GPU-days (1,100 epochs)", "ancestral 1000", 98.7, 82.0, 91.9, 90.7, 58.0),
    ("GeoLDM (2023)", "GPU-days (published)", "ancestral 1000", 98.9, 89.4, 93.8, 92.7, 57.0),
    ("EDM code, 1 epoch on this CPU", "43 min, 2 cores", "ancestral 1000", 14.0, 0.0, 51.5, None, None),
]


def training_data(module, batch_size: int = 64) -> QM9DataModule:
    """The QM9 data module ``module`` trains on: with bonds (and formal charges) for a bond-aware model."""
    if getattr(module, "model_kind", "") == "bonds":
        from sci_diffusion_molecules.data.bond_datamodule import QM9BondDataModule

        return QM9BondDataModule(batch_size=batch_size, formal_charges=bool(module.hparams.get("formal_charges", True)))
    return QM9DataModule(batch_size=batch_size)


def time_training_steps(module, steps: int = 20, precision: str = "bf16", warmup: int = 0) -> float:
    """Training steps per second of ``module.training_loss`` (for a latent model: the diffusion and the
    decoder's reconstruction) on real QM9 batches of 64, under bf16 autocast as the configs train, or
    fp32; ``warmup`` untimed steps first."""
    loader = iter(training_data(module).train_dataloader())
    batches = [next(loader) for _ in range(warmup + steps)]
    module.train()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
    for i, b in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = module.training_loss(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    return steps / (time.perf_counter() - start)


def measure_training(module, steps: int = 20, precision: str = "bf16") -> dict:
    """Training steps per second (:func:`time_training_steps`), and the data loader's own rate."""
    start = time.perf_counter()
    loader = iter(QM9DataModule(batch_size=64).train_dataloader())
    for _ in range(200):
        next(loader)
    load_rate = 200 / (time.perf_counter() - start)
    step_rate = time_training_steps(module, steps, precision)
    return {"train_steps_per_second": round(step_rate, 3), "loader_batches_per_second": round(load_rate, 1),
            "loader_share_of_step": round(step_rate / load_rate, 4), "batch_size": 64, "precision": precision}


def test_split_reconstruction(module, batch_size: int = 256) -> dict:
    """A latent model's autoencoder on the whole QM9 test split: each molecule encoded (a latent drawn
    at sigma_0, as in training) and decoded; atom-type accuracy over atoms, RMSD per molecule."""
    from sci_diffusion_molecules.data.atom_state import centred_atom_state
    from sci_diffusion_molecules.models.latent import reconstruction_quality

    gen = torch.Generator().manual_seed(0)
    right = atoms = molecules = 0
    rmsd_sum = 0.0
    for b in QM9DataModule(batch_size=batch_size).test_dataloader():
        x0 = centred_atom_state(b)
        z = module.encode(x0, b.batch, b.num_graphs, gen)
        q = reconstruction_quality(module.autoencoder.decode(z, b.batch, b.num_graphs), x0, b.batch, b.num_graphs)
        right += q["atom_type_accuracy"] * q["atoms"]
        atoms += q["atoms"]
        rmsd_sum += q["coordinate_rmsd"] * q["molecules"]
        molecules += q["molecules"]
    return {"atom_type_accuracy": right / atoms, "coordinate_rmsd": rmsd_sum / molecules, "molecules": molecules,
            "atoms": atoms}


def model_row(spec: str, args, seconds_budget: float, threads: int | None = None) -> dict:
    """One ``--models`` row: sample ``args.num`` molecules from the checkpoint of ``spec`` (NAME=CKPT)
    within ``seconds_budget``, score them, and time its training step (on ``threads`` threads)."""
    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()
    torch.set_grad_enabled(False)
    name, _, ckpt = spec.partition("=")
    module = load_module(ckpt, domain="molecules")
    meta = module.checkpoint_record
    gen = torch.Generator().manual_seed(args.seed)
    counts = draw_atom_counts(module.atom_count_histogram, args.num, gen)
    compile_seconds = None
    if args.compile:  # compiled once, before the clock starts (Inductor's on-disk cache makes a later run quick)
        start = time.perf_counter()
        list(draw_molecules(module, counts[:4], args.sampler, 2, torch.Generator().manual_seed(0), compile_network=True))
        compile_seconds = round(time.perf_counter() - start, 1)
    mols, start = [], time.perf_counter()
    for i in range(0, args.num, args.batch_size):
        if time.perf_counter() - start > seconds_budget:
            break
        mols += list(draw_molecules(module, counts[i:i + args.batch_size], args.sampler, args.steps, gen,
                                    args.batch_size, compile_network=args.compile))
    seconds = time.perf_counter() - start
    m = evaluate_generated(mols, train_smiles(), train_bond_smiles() if module.model_kind == "bonds" else None)
    backbone = module.hparams.get("backbone", "egnn")
    # the precision the model trains in: the e3nn backbone has no bf16 path (it runs outside autocast)
    precision = "fp32" if backbone == "e3nn" else "bf16"
    row = {"name": name, "model": module.model_kind if backbone == "egnn" else f"{module.model_kind}, {backbone}",
           "backbone": backbone, "train_precision": precision, "checkpoint": ckpt, "checkpoint_sha256": module.checkpoint_hash,
           "training_budget": meta.get("training_budget", "unknown"), "global_step": meta["global_step"],
           "sampler": args.sampler, "steps": args.steps, "molecules": len(mols), "complete": len(mols) >= args.num,
           **{k: m[k] for k in ("atom_stability", "molecule_stability", "validity", "uniqueness",
                                "validity_x_uniqueness", "novelty")},
           "generated_bonds": {k: v for k, v in m.get("generated_bonds", {}).items() if not k.startswith("n_")} or None,
           "seconds": round(seconds, 1), "molecules_per_second": round(len(mols) / seconds, 2),
           "threads": torch.get_num_threads(), "compiled": args.compile, "compile_seconds": compile_seconds,
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    with torch.enable_grad():
        row.update({"train_steps_per_second": round(time_training_steps(module, precision=precision, warmup=2), 3),
                    "batch_size": 64})
    if module.model_kind == "latent":
        row["test_reconstruction"] = test_split_reconstruction(module)
    print(row, flush=True)
    return row


def compare_models(args) -> None:
    """The ``--models`` form: one row per model, one sampler setting, ``--num`` molecules each.
    With ``--parallel`` every model samples in its own process on cores / models threads, side by
    side, so their molecules per second compare under the same load."""
    if args.parallel:
        import multiprocessing

        threads = max(1, torch.get_num_threads() // len(args.models))
        budget = 60 * args.budget_minutes
        with multiprocessing.get_context("spawn").Pool(len(args.models)) as pool:
            rows = pool.starmap(model_row, [(spec, args, budget, threads) for spec in args.models])
    else:
        budget = 60 * args.budget_minutes / len(args.models)
        rows = [model_row(spec, args, budget) for spec in args.models]
    from reporting import command_line

    for row in rows:  # each row keeps the run that measured it, so rows of several runs can share a table
        row.update({"command": "python " + command_line(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "side_by_side": bool(args.parallel)})
    if args.append:
        previous = RESULTS / f"{args.result_name}.json"
        if previous.exists():
            names = {r["name"] for r in rows}
            rows = [r for r in json.loads(previous.read_text())["rows"] if r["name"] not in names] + rows
    markdown = render_models(rows, args.parallel)
    print(markdown)
    write_result(args.result_name, {"num_per_model": args.num, "budget_minutes": args.budget_minutes,
                                    "parallel": args.parallel, "rows": rows}, markdown, update_page=not args.no_readme)


def render_models(rows: list[dict], parallel: bool = False) -> str:
    """The results block (docs/results/) of the ``--models`` form."""
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = ["| model | training budget | steps | sampler | molecules | atom % | mol % | valid % | V x U % | "
             "novelty % | mol/s | train steps/s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = f"{r['molecules']:,}" + ("" if r["complete"] else " (cut by budget)")
        lines.append(f"| {r['name']} ({r['model']}) | {r['training_budget']} | {r['global_step']:,} | {r['sampler']} "
                     f"{r['steps']} | {n} | {pct(r['atom_stability'])} | {pct(r['molecule_stability'])} | "
                     f"{pct(r['validity'])} | {pct(r['validity_x_uniqueness'])} | {pct(r['novelty'])} | "
                     f"{r['molecules_per_second']:.1f} | {r['train_steps_per_second']:.2f} |")
    runs = "; ".join(f"{r['name']}: {r['threads']} thread(s)" + (", torch.compile" if r.get("compiled") else "")
                     + f", {r.get('date', '')}, `{r.get('command', '')}`" for r in rows)
    lines += ["", f"Runs: {runs}." + (" The models ran side by side, one process each, so their speeds compare under the "
                                      "same load." if parallel else "")]
    for r in rows:
        if r.get("generated_bonds"):
            g = r["generated_bonds"]
            lines += ["", f"{r['name']} with its own generated bonds (MiDi's metric): {pct(g['molecule_stability'])} % of "
                          f"the molecules stable, {pct(g['validity'])} % valid, {pct(g['connected'])} % in one piece."]
        if "test_reconstruction" in r:
            q = r["test_reconstruction"]
            lines += ["", f"{r['name']}: its autoencoder reconstructs the QM9 test split ({q['molecules']:,} molecules) "
                          f"with {100 * q['atom_type_accuracy']:.2f} % of the atom types right and a coordinate RMSD of "
                          f"{q['coordinate_rmsd']:.3f} A."]
    if len(rows) == 2:
        a, b = rows
        pa, pb = a["molecule_stability"], b["molecule_stability"]
        se = math.sqrt(pa * (1 - pa) / max(a["molecules"], 1) + pb * (1 - pb) / max(b["molecules"], 1))
        verdict = ("the difference is within two standard errors" if abs(pb - pa) <= 2 * se
                   else f"{(a if pa > pb else b)['name']} is better")
        lines += ["", f"Molecule stability, {b['name']} minus {a['name']}: {100 * (pb - pa):+.1f} points (standard error "
                      f"{100 * se:.1f}); {verdict}."]
    return "\n".join(lines)


def stability_gap(rows: list[dict], sampler: str, steps: int, precision: str = "bf16") -> dict | None:
    """Molecule stability of ``sampler``/``steps`` minus that of ancestral 1000 (same checkpoint), in
    points, with the standard error of the difference (two independent binomial proportions)."""
    find = {(r["sampler"], r["steps"], r["precision"]): r for r in rows if r.get("molecules")}
    a, b = find.get((sampler, steps, precision)), find.get(("ddpm", 1000, precision))
    if a is None or b is None:
        return None
    pa, pb = a["molecule_stability"], b["molecule_stability"]
    se = math.sqrt(pa * (1 - pa) / a["molecules"] + pb * (1 - pb) / b["molecules"])
    return {"sampler": sampler, "steps": steps, "precision": precision,
            "gap_points": round(100 * (pa - pb), 1), "standard_error_points": round(100 * se, 1)}


def render(rows: list[dict], training: dict, training_fp32: dict, budget: str) -> str:
    """The results block (docs/results/molecules_qm9.md): published rows, ours, the 2-point target and the training throughput."""
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = ["| model | training budget | sampler | atom % | mol % | valid % | V x U % | novelty % | mol/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, bud, samp, a, mo, v, vu, nov in PUBLISHED:
        f = lambda x: "-" if x is None else f"{x:.1f}"  # noqa: E731
        lines.append(f"| {name} | {bud} | {samp} | {f(a)} | {f(mo)} | {f(v)} | {f(vu)} | {f(nov)} | |")
    for r in rows:
        if r["molecules"] == 0:
            lines.append(f"| **ours, bundled** | {budget} | {r['sampler']} {r['steps']} {r['precision']} | "
                         "not run: budget spent | | | | | |")
            continue
        n = f" ({r['molecules']} mols{'' if r['complete'] else ', cut by budget'})"
        lines.append(f"| **ours, bundled** | {budget} | {r['sampler']} {r['steps']} {r['precision']}{n} | "
                     f"{pct(r['atom_stability'])} | "
                     f"{pct(r['molecule_stability'])} | {pct(r['validity'])} | {pct(r['validity_x_uniqueness'])} | "
                     f"{pct(r['novelty'])} | {r['molecules_per_second']:.1f} |")
    lines.append("")
    lines.append(f"Training throughput of the bundled model: {training['train_steps_per_second']:.2f} steps/s at "
                 f"batch 64 with bf16 autocast ({training_fp32['train_steps_per_second']:.2f} in float32); the QM9 "
                 f"loader alone gives {training['loader_batches_per_second']:.0f} batches/s, so loading is "
                 f"{100 * training['loader_share_of_step']:.1f}% of a bf16 step. Peak memory per row is in the JSON "
                 "(`peak_rss_mb`).")
    gaps = targets(rows)
    if gaps:
        lines.append("")
        lines.append("Target (issue 3): DPM-Solver++ at 50 steps loses at most 2 points of molecule stability "
                     "against ancestral 1000 on the same checkpoint. Measured here: " + "; ".join(
                         f"{g['sampler']} {g['steps']} {g['gap_points']:+.1f} points "
                         f"(standard error {g['standard_error_points']:.1f})"
                         for g in gaps) + ".")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", help="default: the bundled EDM-style checkpoint")
    p.add_argument("--num", type=int, default=1000, help="molecules per sampler setting")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--budget-minutes", type=float, default=90.0, help="wall-clock budget for all sampling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-readme", action="store_true")
    p.add_argument("--models", nargs="+", metavar="NAME=CKPT",
                   help="compare these checkpoints with one sampler setting (see the module docstring)")
    p.add_argument("--sampler", default="dpmpp2m_sde", help="with --models: the sampler")
    p.add_argument("--steps", type=int, default=50, help="with --models: its steps")
    p.add_argument("--compile", action="store_true",
                   help="with --models: sample through torch.compile (compiled before the timed draw; needs g++)")
    p.add_argument("--result-name", default="molecules_qm9_models",
                   help="with --models: results/<name>.json and the block <!-- results:<name> --> of a docs/results page")
    p.add_argument("--append", action="store_true",
                   help="with --models: keep the other models' rows of an earlier run of the same --result-name")
    p.add_argument("--parallel", action="store_true",
                   help="with --models: one process per model, each on cores / models threads")
    p.add_argument("--from-json", metavar="RESULTS_JSON",
                   help="sample nothing: re-render a saved results file (its command, machine and date kept)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args()
    keep_freed_memory()  # as the CLI does: the EGNN's large edge tensors reuse freed memory
    if args.from_json:
        rerender(args.from_json, update_page=not args.no_readme)
        return
    if args.models:
        compare_models(args)
        return

    ckpt = args.ckpt or bundled_checkpoint("sci_diffusion_molecules", "edm")
    module = load_module(ckpt, domain="molecules")
    meta = read_checkpoint(ckpt)["sci_diffusion"]
    budget = meta.get("training_budget", "unknown")
    smiles = train_smiles()
    deadline = time.perf_counter() + 60 * args.budget_minutes
    rows = []
    torch.set_grad_enabled(False)
    cost = {}  # seconds per molecule per network evaluation, by precision, measured on the rows before
    for sampler, steps, precision in SETTINGS:
        gen = torch.Generator().manual_seed(args.seed)
        counts = draw_atom_counts(module.atom_count_histogram, args.num, gen)
        target = args.num
        known = cost.get(precision, cost.get("bf16", 0) * FP32_COST_FACTOR)
        if known:  # shrink a row that cannot finish inside the budget
            target = min(args.num, int((deadline - time.perf_counter()) / (known * function_evaluations(sampler, steps))))
        if target < 10:
            print(f"skipping {sampler} {steps}: the budget is spent", flush=True)
            rows.append({"sampler": sampler, "steps": steps, "precision": precision, "molecules": 0, "complete": False,
                         "skipped": "the --budget-minutes budget was spent"})
            continue
        mols, start = [], time.perf_counter()
        for i in range(0, target, args.batch_size):
            chunk = counts[i:min(i + args.batch_size, target)]
            mols += list(sample_molecules(module, chunk, sampler, steps, gen, args.batch_size, precision=precision))
        seconds = time.perf_counter() - start
        cost[precision] = seconds / (len(mols) * function_evaluations(sampler, steps))
        m = evaluate_molecules(mols, smiles)
        rows.append({"sampler": sampler, "steps": steps, "precision": precision, "molecules": len(mols),
                     "complete": len(mols) >= args.num,
                     "atom_stability": m["atom_stability"], "molecule_stability": m["molecule_stability"],
                     "validity": m["validity"], "uniqueness": m["uniqueness"],
                     "validity_x_uniqueness": m["validity_x_uniqueness"], "novelty": m["novelty"],
                     "seconds": round(seconds, 1), "molecules_per_second": round(len(mols) / seconds, 2),
                     "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
        print(rows[-1], flush=True)
    with torch.enable_grad():
        training = measure_training(module, precision="bf16")
        training_fp32 = measure_training(module, precision="fp32")
    print(training, training_fp32)

    markdown = render(rows, training, training_fp32, budget)
    print(markdown)
    write_result("molecules_qm9", {"checkpoint": str(ckpt), "checkpoint_sha256": module.checkpoint_hash,
                                   "training_budget": budget, "num_per_setting": args.num,
                                   "budget_minutes": args.budget_minutes, "rows": rows, "training": training,
                                   "training_fp32": training_fp32, "targets": targets(rows),
                                   "published": [dict(zip(("model", "budget", "sampler", "atom", "mol", "valid", "vxu",
                                                           "novelty"), r)) for r in PUBLISHED]},
                 markdown, update_page=not args.no_readme)


def targets(rows: list[dict]) -> list[dict]:
    return [g for g in (stability_gap(rows, "dpmpp2m_sde", 50), stability_gap(rows, "dpmpp2m", 50)) if g]


def rerender(path: str, update_page: bool) -> None:
    """Rewrite a saved run's results block and derived fields from its own rows (no sampling): the sampler table of
    ``molecules_qm9``, or a ``--models`` comparison under its own ``--result-name``."""
    with open(path) as fh:
        record = json.load(fh)
    name = record.pop("benchmark", None) or "molecules_qm9"
    if "training" in record:  # the sampler table
        record["targets"] = targets(record["rows"])
        markdown = render(record["rows"], record["training"], record["training_fp32"], record["training_budget"])
    else:
        markdown = render_models(record["rows"], record.get("parallel", False))
    print(markdown)
    provenance = {k: record.pop(k) for k in PROVENANCE}
    write_result(name, record, markdown, update_page=update_page, provenance=provenance)


if __name__ == "__main__":
    main()
