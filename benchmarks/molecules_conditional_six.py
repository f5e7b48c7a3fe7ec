"""The conditional QM9 protocol for all six properties (EDM's Table 3; docs/protocols.md §1), one generator.

    python benchmarks/molecules_conditional_six.py --ckpt SIX.ckpt [--classifiers gap=C1 alpha=C2 ...]
        [--num 10000] [--budget-minutes 240]

For each property that has an evaluation classifier (trained on Da; ``--classifiers NAME=CKPT``, default the
bundled ones): the three baselines on Db (``conditional_protocol.baselines``: lower bound, naive, #atoms), then
``--num`` molecules from the multi-property generator (trained on Db), conditioned on that property alone (the
others dropped, as the protocol's row for one property asks), with sizes and targets drawn jointly from Db's
protocol part, at W = 1. Each MAE is also given normalised, (MAE - lower bound) / (#atoms - lower bound), so rows
with classifiers of different quality compare, and with its failed fraction and the MAE that counts a failure at
the naive row's error. The published rows (EDM, GeoLDM, GeoBFN, EEGSDE) stand beside ours, normalised with their
own #atoms and lower bound. A property without a classifier gets no row and the page says so. The gap's guided
settings are the gap benchmark's (``molecules_conditional.py --ckpt SIX.ckpt``).

``--baseline-molecules N`` scores the baselines on N molecules of Db instead of all (a pilot run). Writes
benchmarks/results/<--result-name>.json (default molecules_conditional_six) and its block in
docs/results/molecules_conditional.md.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from reporting import write_result

from sci_diffusion.checkpoints import bundled_checkpoint, load_module, read_checkpoint
from sci_diffusion.errors import UserError
from sci_diffusion.memory import keep_freed_memory
from sci_diffusion_molecules.data.qm9 import PROPERTY_NAMES, PROPERTY_UNITS, conditional_halves, edm_split, load_qm9, train_smiles
from sci_diffusion_molecules.evaluation.conditional_protocol import baselines, evaluate_generator, normalised_mae
from sci_diffusion_molecules.models.property_model import load_property_model

RESULT_NAME = "molecules_conditional_six"
# EDM's Table 3 and its successors as published (REFERENCE.md), in PROPERTY_NAMES order and units: alpha Bohr^3,
# gap / HOMO / LUMO in eV (published in meV), mu D, Cv cal/mol K.
PUBLISHED = {
    "naive": (9.01, 1.470, 0.645, 1.457, 1.616, 6.857),
    "#atoms": (3.86, 0.866, 0.426, 0.813, 1.053, 1.971),
    "EDM": (2.76, 0.655, 0.356, 0.584, 1.111, 1.101),
    "GeoLDM": (2.37, 0.587, 0.340, 0.522, 1.108, 1.025),
    "GeoBFN": (2.34, 0.577, 0.328, 0.516, 0.998, 0.949),
    "EEGSDE (energy guidance, secondary source)": (2.50, 0.487, 0.302, 0.447, 0.777, 0.941),
    "lower bound": (0.10, 0.064, 0.039, 0.036, 0.043, 0.040),
}
MILLI = {"gap", "homo", "lumo"}  # shown in meV, as published


def shown(name: str, value: float) -> str:
    """A MAE in the table's unit: meV for the orbital energies, the property's unit otherwise."""
    return f"{1000 * value:.0f}" if name in MILLI else f"{value:.3g}"


def table_unit(name: str) -> str:
    return "meV" if name in MILLI else PROPERTY_UNITS[name]


def classifier_paths(specs: list[str]) -> dict[str, str]:
    """``--classifiers NAME=CKPT ...`` as ``{property: path}``; without them the bundled classifiers
    (``classifier_<property>``, the gap's ``classifier``) that exist."""
    if specs:
        paths = dict(spec.split("=", 1) for spec in specs)
        unknown = [n for n in paths if n not in PROPERTY_NAMES]
        if unknown:
            raise SystemExit(f"--classifiers names {unknown[0]!r}; the QM9 properties are {', '.join(PROPERTY_NAMES)}.")
        return paths
    found = {}
    for name in PROPERTY_NAMES:
        try:
            found[name] = str(bundled_checkpoint("sci_diffusion_molecules", "classifier" if name == "gap" else
                                                 f"classifier_{name}"))
        except (KeyError, UserError):
            continue  # no bundled classifier for this property yet: no row
    return found


def property_row(name: str, module, classifier_path: str, args, arrays, halves, smiles, deadline: float) -> dict:
    """The baselines and the generator's row for one property, with its classifier."""
    classifier = load_property_model(classifier_path, "property_classifier")
    db = halves["Db"][: args.baseline_molecules] if args.baseline_molecules else halves["Db"]
    base = baselines(classifier, arrays, halves["Da"], db, seed=args.seed)
    base = {k: (v[name] if isinstance(v, dict) else v) for k, v in base.items()}
    row = {"property": name, "unit": PROPERTY_UNITS[name], "classifier": classifier_path,
           "classifier_sha256": classifier.checkpoint_hash,
           "classifier_budget": read_checkpoint(classifier_path)["sci_diffusion"].get("training_budget", "unknown"),
           **{k: base[k] for k in ("lower_bound", "naive", "atoms", "db_molecules")}}
    if time.perf_counter() > deadline:
        return {**row, "molecules": 0, "skipped": "the --budget-minutes budget was spent"}
    generated = evaluate_generator(module, classifier, args.num, args.sampler, args.steps, None, seed=args.seed,
                                   batch_size=args.batch_size, train_smiles=smiles,
                                   failure_error={name: base["naive"]}, part="protocol", condition_on=[name])
    row.update({k: generated[k] for k in ("molecules", "scored", "failed_fraction", "molecule_stability", "validity",
                                          "atom_stability", "novelty", "seconds", "molecules_per_second")})
    row["mae"] = generated["mae"][name]
    row["mae_failures_at_naive"] = generated["mae_failures_at_naive"][name]
    row["normalised_mae"] = normalised_mae(row["mae"], base["lower_bound"], base["atoms"])
    row["beats_atoms"] = row["mae"] < base["atoms"]
    print({k: row[k] for k in ("property", "mae", "normalised_mae", "atoms", "molecule_stability")}, flush=True)
    return row


def render(rows: list[dict], meta: dict) -> str:
    """The block: one column per property; our baselines and row, then the published rows, each normalised."""
    names = [r["property"] for r in rows]
    header = "| | " + " | ".join(f"{n} ({table_unit(n)})" for n in names) + " |"
    rule = "|---|" + "---|" * len(names)
    by = {r["property"]: r for r in rows}

    def line(label: str, cell) -> str:
        return f"| {label} | " + " | ".join(cell(by[n]) for n in names) + " |"

    def ours(r: dict) -> str:
        if not r.get("molecules"):
            return "not run"
        return (f"**{shown(r['property'], r['mae'])}** ({r['normalised_mae']:.2f}; failed {100 * r['failed_fraction']:.1f} %, "
                f"{shown(r['property'], r['mae_failures_at_naive'])} counting them)")

    lines = [f"All six properties of the conditional QM9 protocol, one generator conditioned on each alone (W = 1, "
             f"{meta['sampler']} {meta['steps']} steps, targets and sizes drawn jointly from Db's protocol part). MAE, "
             "normalised (MAE - lower bound) / (#atoms - lower bound) in brackets.", "", header, rule,
             line("naive (Db, shuffled labels), our classifier", lambda r: f"{shown(r['property'], r['naive'])} "
                  f"({normalised_mae(r['naive'], r['lower_bound'], r['atoms']):.2f})"),
             line("#atoms (per-count median fitted on Da)", lambda r: f"{shown(r['property'], r['atoms'])} (1.00)"),
             line("**ours**, conditioned on the property alone", ours),
             line("molecule stability of those, %",
                  lambda r: "-" if not r.get("molecules") else f"{100 * r['molecule_stability']:.1f}"),
             line("lower bound (real Db), our classifier", lambda r: f"{shown(r['property'], r['lower_bound'])} (0.00)")]
    lines += ["", "Published (EDM's classifiers, GPU-days), normalised with the published #atoms and lower bound:", "",
              header, rule]
    for label, values in PUBLISHED.items():
        cells = []
        for n in names:
            j = PROPERTY_NAMES.index(n)
            mae, atoms, lower = values[j], PUBLISHED["#atoms"][j], PUBLISHED["lower bound"][j]
            cells.append(f"{shown(n, mae)} ({normalised_mae(mae, lower, atoms):.2f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    missing = [n for n in PROPERTY_NAMES if n not in names]
    budgets = "; ".join(f"{r['property']}: {r['classifier_budget']}" for r in rows)
    lines += ["", f"Generator: {meta['generator_budget']}. Classifiers: {budgets}."]
    if missing:
        lines += ["", f"No row yet for {', '.join(missing)}: no evaluation classifier for them (trained on Da) exists."]
    beaten = [r["property"] for r in rows if r.get("beats_atoms")]
    lines += ["", f"Target (issue 29 §1): every property beats its #atoms row at W = 1; measured: "
                  f"{len(beaten)} of {len(rows)} ({', '.join(beaten) or 'none'})."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="the multi-property generator trained on Db")
    p.add_argument("--classifiers", nargs="*", default=[], metavar="NAME=CKPT",
                   help="evaluation classifiers trained on Da, one per property (default: the bundled ones)")
    p.add_argument("--num", type=int, default=10000, help="molecules per property row")
    p.add_argument("--baseline-molecules", type=int, default=0, help="Db molecules of the baselines (0: all of Db)")
    p.add_argument("--sampler", default="dpmpp2m_sde")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--budget-minutes", type=float, default=240.0, help="wall-clock budget; later rows are skipped")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-readme", action="store_true")
    p.add_argument("--result-name", default=RESULT_NAME)
    p.add_argument("--json", type=Path, help="write the results here instead of benchmarks/results/ (pilot runs)")
    args = p.parse_args(argv)

    module = load_module(args.ckpt, domain="molecules")
    conditioning = module.property_conditioning
    if conditioning is None:
        raise SystemExit(f"{args.ckpt} is not conditioned on any property.")
    paths = {n: c for n, c in classifier_paths(args.classifiers).items() if n in conditioning.names}
    if not paths:
        raise SystemExit(f"No evaluation classifier for any of {', '.join(conditioning.names)}: pass --classifiers.")
    torch.set_grad_enabled(False)
    keep_freed_memory()
    deadline = time.perf_counter() + 60 * args.budget_minutes
    arrays = load_qm9()
    halves = conditional_halves(edm_split(arrays)["train"])
    smiles = train_smiles()
    rows = [property_row(n, module, paths[n], args, arrays, halves, smiles, deadline)
            for n in PROPERTY_NAMES if n in paths]
    meta = {"checkpoint": args.ckpt, "checkpoint_sha256": module.checkpoint_hash,
            "generator_budget": read_checkpoint(args.ckpt)["sci_diffusion"].get("training_budget", "unknown"),
            "conditioned_on": conditioning.names, "sampler": args.sampler, "steps": args.steps, "num": args.num,
            "baseline_molecules": args.baseline_molecules or int(np.asarray(halves["Db"]).size)}
    markdown = render(rows, meta)
    print(markdown)
    write_result(args.result_name, {**meta, "units": "property units (eV for energies)", "rows": rows,
                                    "published": {k: dict(zip(PROPERTY_NAMES, v)) for k, v in PUBLISHED.items()}},
                 markdown, out=args.json, update_page=not args.no_readme)


if __name__ == "__main__":
    main()
