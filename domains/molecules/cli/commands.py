"""CLI verbs of the molecules domain: ``sample molecules`` and ``evaluate molecules``.

Heavy imports (torch-geometric, RDKit) happen inside ``run_*`` so ``sci-diffusion --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import time
from pathlib import Path

from sci_diffusion.checkpoints import bundled_checkpoint
from sci_diffusion.errors import UserError
from sci_diffusion.names import SAMPLER_NAMES, SPACINGS

CONDITION_SOURCES = ("db",)
MODEL_CHOICES = ("edm", "latent")  # the bundled unconditional models, by MoleculeDiffusion.model_kind


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", help="a molecules checkpoint of either model (default: the bundled QM9 model that "
                                  "--model names; with a condition on the gap, the bundled gap-conditioned model)")
    p.add_argument("--model", choices=MODEL_CHOICES,
                   help="which bundled model samples: edm (default; EDM-style, diffuses the atoms) or latent "
                        "(GeoLDM-style, diffuses an autoencoder's latents); with --ckpt, the kind the checkpoint "
                        "must hold")
    p.add_argument("--num", type=int, default=100, help="molecules to draw")
    p.add_argument("--sampler", default="dpmpp2m_sde", choices=SAMPLER_NAMES,
                   help="dpmpp2m_sde (default): stochastic DPM-Solver++ on a quadratic time grid; at 50 steps "
                        "as many stable molecules as ancestral ddpm at 1000, far more than the ODE form dpmpp2m "
                        "(see the benchmark)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (independent of the training T)")
    p.add_argument("--spacing", choices=SPACINGS, help="the sampler's time grid: uniform, quadratic or logsnr "
                                                        "(default: the sampler's own; dpmpp2m_sde: quadratic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--atoms", type=int, help="atoms per molecule (default: drawn from the training histogram)")
    p.add_argument("--condition", nargs="+", action="extend", metavar="NAME=VALUE",
                   help="target properties, e.g. gap=6.5 (eV for gap, homo and lumo; Bohr^3 alpha; D mu; cal/mol K Cv)")
    p.add_argument("--condition-from", choices=CONDITION_SOURCES,
                   help="db: draw each molecule's size and targets jointly from the model's training set "
                        "(Db in the conditional QM9 protocol)")
    p.add_argument("--guidance", type=float, default=1.0, metavar="W",
                   help="classifier-free guidance weight: 1 (default) the plain conditional model, 0 the "
                        "unconditional one, above 1 pushed towards the target")
    p.add_argument("--guidance-interval", metavar="LO,HI",
                   help="apply classifier-free guidance only at diffusion times LO <= t <= HI (Kynkaanniemi et al. "
                        "2024), one network pass elsewhere; on the bundled gap model 0.1,0.5 lowers the MAE as much as "
                        "guiding every step, at 20 of 50 steps (README)")
    p.add_argument("--gradient-guidance", type=float, default=0.0, metavar="S",
                   help="gradient guidance strength from a noise-aware property regressor (EEGSDE); needs --regressor")
    p.add_argument("--regressor", help="a noise-aware property regressor checkpoint, e.g. the bundled "
                                       "checkpoints/qm9_gap_regressor.ckpt")
    p.add_argument("--classifier", help="property classifier whose predictions go into the SDF and candidates.csv "
                                        "(default, for a conditional run: the bundled gap classifier)")
    p.add_argument("--batch-size", type=int, default=100,
                   help="molecules sampled together (about 100 keeps a batch's edge tensors in cache)")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"),
                   help="network arithmetic: bfloat16 autocast (fast on AVX512-BF16 CPUs) or float32")
    p.add_argument("--compile", action="store_true",
                   help="run the network through torch.compile (needs a C++ compiler): compiled once per process "
                        "(seconds to a minute), then about 1.1x the molecules per second on a CPU (README)")
    p.add_argument("--bonds", default="edm", choices=("edm", "rdkit"), help="bond rule for the SDF bond block")
    p.add_argument("--novelty", action=argparse.BooleanOptionalAction, default=True,
                   help="flag each candidate as novel or not against the QM9 training SMILES")
    p.add_argument("--out", required=True, help="output .sdf or .xyz (written in chunks, renamed when complete); "
                                                "the candidates table goes beside it as .csv")
    p.add_argument("--png", help="optional PNG grid of 2-D depictions of the first 16 molecules")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show progress")
    p.add_argument("--smiles", help="conformers of this molecule: RDKit adds its hydrogens, the model generates the "
                                    "coordinates under the molecule's graph; --out must be .sdf")
    p.add_argument("--fix-atoms", metavar="FRAGMENT.sdf", help="grow this fragment (first record; its atoms keep their "
                                                              "types and positions) to --atoms atoms by inpainting")
    p.add_argument("--resample", type=int, default=1, metavar="R",
                   help="RePaint passes per step for --fix-atoms (default 1: plain replacement)")
    triage = p.add_argument_group(
        "triage", "rank and filter the candidates. The candidates table (.csv) has, per molecule: index, smiles, "
                  "stable, valid, novel, failed (0/1), qed (RDKit QED, 0..1), sa (synthetic accessibility, 1 easy..10 "
                  "hard), rings, aromatic_rings, charged_atoms, net_charge (empty for an invalid molecule), and "
                  "target_<p>/predicted_<p> per property; the run's summary (.json) gains the mean pairwise Tanimoto "
                  "distance of the unique valid molecules (Morgan radius 2, 2048 bits; at most 2,000 of them, drawn "
                  "with seed 0)")
    triage.add_argument("--filter", metavar="EXPR",
                        help="keep the candidates for which EXPR holds, e.g. 'valid and novel and gap > 6' or 'qed > 0.5 "
                             "and sa < 4'. Names: index, valid, stable, novel, failed, qed, sa, rings, aromatic_rings, "
                             "charged_atoms, net_charge; for a property p: p (the classifier's prediction where the run "
                             "has one for p, else the target), target_p, predicted_p. Numbers, comparisons, and/or/not, "
                             "+ - * / and brackets; nothing else. An empty cell is NaN: comparisons with it are false. "
                             "The .csv gains passes_filter; the passing rows, ranked, go to <out>.filtered.csv; the "
                             "SDF/XYZ keeps every molecule, so indices stay those of --out")
    triage.add_argument("--rank", metavar="EXPR",
                        help="sort the filtered candidates by this expression, smallest first (e.g. '-qed', 'sa'). "
                             "Default: with targets and a classifier's predictions of them, the summed |predicted_p - "
                             "target_p|; else QED, highest first. Rows where it is empty go last; ties by index")
    triage.add_argument("--top-png", metavar="PATH",
                        help="PNG grid of the 16 best-ranked candidates that pass --filter, captioned with index, "
                             "SMILES and QED/SA (or the predicted property and its target)")
    watch = p.add_argument_group("trajectory", "watch the first molecules form (the first batch's)")
    watch.add_argument("--trajectory", metavar="PATH.xyz",
                       help="multi-frame XYZ of the sampler's state x_t after every step (one frame per step) for "
                            "the first molecules, one molecule after the other (comment: molecule, step, t from 1 noise "
                            "to 0 data); the network's estimate of the final molecule, x0_hat, goes beside it as "
                            "PATH.x0.xyz. Elements are the argmax of the state's type scores (the latent model's states "
                            "decoded by its autoencoder). The last x_t frame is the molecule in --out. The molecules "
                            "differ in size: for a viewer that wants one atom count per file (VMD), give "
                            "--trajectory-molecules 1 or --atoms")
    watch.add_argument("--trajectory-molecules", type=int, metavar="N",
                       help="molecules in --trajectory (default 4; at most the first batch: --batch-size, halved by "
                            "--guidance other than 0 and 1)")
    watch.add_argument("--trajectory-png", metavar="PATH",
                       help="PNG strip of 6 evenly spaced steps of the first molecule's x_t, projected on its final "
                            "principal plane, atoms coloured by element, EDM bonds")


def _check_sample_arguments(args: argparse.Namespace) -> dict[str, float] | None:
    """Everything that can be said about the flags before a checkpoint is read; returns the targets."""
    from sci_diffusion.atomic import check_writable

    from ..data.conditioning import parse_targets

    out = Path(args.out)
    if out.suffix.lower() not in (".sdf", ".xyz"):
        raise UserError(f"--out {out} must end in .sdf or .xyz.")
    check_writable(out)
    if args.png:
        check_writable(args.png, "--png")
    if args.num < 1 or args.steps < 1 or args.batch_size < 1:
        raise UserError("--num, --steps and --batch-size must be positive.")
    if args.atoms is not None and not 1 <= args.atoms <= 100:
        raise UserError(f"--atoms {args.atoms} is out of range; use 1 to 100 atoms.")
    for flag, value in (("--guidance", args.guidance), ("--gradient-guidance", args.gradient_guidance)):
        if not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number.")
    args.guidance_interval = parse_guidance_interval(args.guidance_interval, args.guidance)
    targets = parse_targets(args.condition) if args.condition else None
    if targets is not None and args.condition_from:
        raise UserError("Give either --condition or --condition-from, not both.")
    if args.condition_from and args.atoms is not None:
        raise UserError("--condition-from draws each molecule's size with its targets; drop --atoms.")
    conditional = targets is not None or args.condition_from is not None
    if args.gradient_guidance and not args.regressor:
        raise UserError("--gradient-guidance needs --regressor CKPT, a noise-aware property regressor "
                        "(e.g. the bundled checkpoints/qm9_gap_regressor.ckpt).")
    if args.gradient_guidance < 0:
        raise UserError("--gradient-guidance must not be negative.")
    if not conditional and (args.guidance != 1.0 or args.gradient_guidance):
        raise UserError("Guidance needs a target: add --condition NAME=VALUE or --condition-from db.")
    return targets


def parse_guidance_interval(text: str | None, scale: float) -> tuple[float, float] | None:
    """``--guidance-interval LO,HI`` as ``(LO, HI)`` (None when not given), or one sentence on what is wrong."""
    if text is None:
        return None
    from sci_diffusion.guidance import check_interval

    try:
        interval = check_interval(text.split(","))  # refuses a word, NaN, reversed bounds, a third value
    except ValueError:
        raise UserError(f"--guidance-interval takes two diffusion times LO,HI with 0 <= LO < HI <= 1, such as 0.1,0.5; "
                        f"not {text!r}.") from None
    if scale in (0.0, 1.0):
        raise UserError("--guidance-interval limits classifier-free guidance: give a --guidance weight other than 0 and 1.")
    return interval


TRIAGE_FLAGS = ("filter", "rank", "top_png", "trajectory", "trajectory_molecules", "trajectory_png")


def _refuse_triage_flags(args: argparse.Namespace) -> None:
    """--smiles and --fix-atoms write no candidates table and sample otherwise: refuse the triage flags there."""
    used = [f"--{name.replace('_', '-')}" for name in TRIAGE_FLAGS if getattr(args, name, None) is not None]
    if used:
        raise UserError(f"{', '.join(used)} work{'s' * (len(used) == 1)} with plain and conditional sampling, "
                        f"not with {'--smiles' if args.smiles else '--fix-atoms'}.")


def _check_triage_arguments(args: argparse.Namespace):
    """The triage and trajectory flags, checked before any checkpoint is read; returns the parsed
    ``(filter, rank)`` expressions (None where not given)."""
    from sci_diffusion.atomic import check_writable
    from sci_diffusion.guidance import classifier_free_passes

    from ..evaluation.triage import CandidateExpression

    expressions = tuple(None if getattr(args, name) is None else CandidateExpression.parse(getattr(args, name), flag)
                        for name, flag in (("filter", "--filter"), ("rank", "--rank")))
    out = Path(args.out).resolve()
    for flag, path in (("--top-png", args.top_png), ("--trajectory-png", args.trajectory_png),
                       ("--trajectory", args.trajectory)):
        if path:
            check_writable(path, flag)
            if out in Path(path).resolve().parents:
                raise UserError(f"{flag} {path} lies under the --out file {args.out}; put it beside it.")
    if args.trajectory:
        trajectory = Path(args.trajectory)
        if trajectory.suffix.lower() != ".xyz":
            raise UserError(f"--trajectory {trajectory} must end in .xyz (a multi-frame XYZ file).")
        if trajectory.resolve() == out:
            raise UserError(f"--trajectory {trajectory} is the --out file; give it another name.")
    if args.trajectory_molecules is not None:
        if not args.trajectory:
            raise UserError("--trajectory-molecules needs --trajectory PATH.xyz.")
        first_batch = min(args.num, max(1, args.batch_size // classifier_free_passes(args.guidance)))
        if not 1 <= args.trajectory_molecules <= first_batch:
            raise UserError(f"--trajectory-molecules {args.trajectory_molecules} is out of range; the first batch "
                            f"holds 1 to {first_batch} molecules (--num, --batch-size, halved by --guidance).")
    return expressions


def _property_model(path: str, role: str):
    """Load a property classifier or regressor checkpoint; UserError if it is another kind of model."""
    from sci_diffusion.checkpoints import load_module, read_checkpoint

    found = read_checkpoint(path)["sci_diffusion"].get("role")
    if found != role:
        raise UserError(f"{path} is not a {role.replace('_', ' ')} checkpoint.")
    return load_module(path, domain="molecules")


def run_sample(args: argparse.Namespace) -> int:
    import sys

    import numpy as np
    import torch
    from tqdm.auto import tqdm

    import sci_diffusion
    from sci_diffusion.atomic import write_json
    from sci_diffusion.checkpoints import load_module
    from sci_diffusion.memory import release_freed_memory
    from sci_diffusion.samplers import resolve_spacing

    from ..chem.elements import QM9_ELEMENTS
    from ..chem.files import MoleculeWriter, draw_grid_png
    from ..data.qm9 import PROPERTY_UNITS
    from ..evaluation.candidates import CandidateTable
    from ..evaluation.metrics import as_molecule
    from ..evaluation.triage import Ranking, Triage, diversity_summary
    from ..generation.sampling import Guidance, draw_atom_counts, sample_molecules
    from ..generation.trajectory import DEFAULT_MOLECULES, TrajectoryRecorder
    from ..models.property_model import predict_properties

    if args.smiles or args.fix_atoms:
        from .inpainting import run_inpainting_sample

        _refuse_triage_flags(args)
        return run_inpainting_sample(args)
    targets = _check_sample_arguments(args)
    keep, rank = _check_triage_arguments(args)
    conditional = targets is not None or args.condition_from is not None
    out = Path(args.out)
    if args.ckpt:
        ckpt = Path(args.ckpt)
    elif conditional:
        if args.model == "latent":
            raise UserError("The bundled latent model is unconditional; pass --ckpt with a conditional latent model, "
                            "or drop --model latent to use the bundled gap-conditioned EDM model.")
        if targets is not None and set(targets) != {"gap"}:
            raise UserError(f"The bundled conditional model is conditioned on gap only, not on "
                            f"{', '.join(sorted(set(targets) - {'gap'}))}; pass --ckpt.")
        ckpt = bundled_checkpoint("sci_diffusion_molecules", "gap")
    else:
        ckpt = bundled_checkpoint("sci_diffusion_molecules", "latent" if args.model == "latent" else "unconditional")
    module = load_module(ckpt, domain="molecules")
    kind = getattr(module, "model_kind", None)
    if kind is None:
        raise UserError(f"Checkpoint {ckpt} holds a {type(module).__name__}, not a molecule generator.")
    if args.model and kind != args.model:
        raise UserError(f"Checkpoint {ckpt} holds the {kind} model, not the {args.model} one.")
    if module.types_given:
        raise UserError(f"Checkpoint {ckpt} is a conformer model (atom types given): use it with --smiles.")
    if args.gradient_guidance and kind != "edm":
        raise UserError(f"Checkpoint {ckpt} holds the {kind} model: gradient guidance needs a model that diffuses "
                        "atoms (the regressor reads positions and types); use --guidance instead.")
    conditioning = module.property_conditioning
    if conditional and conditioning is None:
        raise UserError(f"Checkpoint {ckpt} is not conditioned on any property; it samples without --condition.")
    gen = torch.Generator().manual_seed(args.seed)
    cond = values = None
    if args.condition_from:
        counts, values = conditioning.draw_joint(args.num, gen)
        values = values.numpy()
    else:
        if args.atoms is not None:
            counts = [args.atoms] * args.num
        elif module.atom_count_histogram:
            counts = draw_atom_counts(module.atom_count_histogram, args.num, gen)
        else:
            raise UserError(f"Checkpoint {ckpt} has no atom-count histogram; pass --atoms.")
        if targets is not None:
            target = conditioning.targets_from_mapping(targets)
            for problem in conditioning.outside_training_range(target):
                print(f"sci-diffusion: warning: {problem}; the model has seen no such molecule, so expect a poor match.",
                      file=sys.stderr)
            values = np.repeat(target[None], args.num, axis=0)
    if values is not None:
        cond = conditioning.condition(torch.from_numpy(values))
    guidance = None
    if conditional and (args.guidance != 1.0 or args.gradient_guidance):
        regressor = _property_model(args.regressor, "property_regressor") if args.gradient_guidance else None
        if regressor is not None and not set(conditioning.names) <= set(regressor.properties):
            raise UserError(f"Regressor {args.regressor} predicts {', '.join(regressor.properties)}, not all of "
                            f"{', '.join(conditioning.names)}.")
        guidance = Guidance(args.guidance, regressor, args.gradient_guidance, args.guidance_interval or (0.0, 1.0))
    classifier = None
    if args.classifier and module.element_set != QM9_ELEMENTS:
        raise UserError(f"The property classifiers read QM9's elements only, not this model's "
                        f"{module.element_set.describe()}; drop --classifier.")
    if args.classifier or (conditional and conditioning.names == ["gap"]):
        path = args.classifier or bundled_checkpoint("sci_diffusion_molecules", "classifier", "--classifier")
        classifier = _property_model(path, "property_classifier")
    predicted = classifier.properties if classifier is not None else []
    names = list(conditioning.names) if conditional else []
    names += [n for n in predicted if n not in names]
    target_names = list(conditioning.names) if values is not None else []
    for expression in (keep, rank):
        if expression is not None:
            expression.check_run(target_names, predicted, args.novelty)
    ranking = Ranking(f"{rank.text} ascending", rank) if rank else Ranking.default(target_names, predicted)
    reference = novelty_reference(module) if args.novelty else None
    table = CandidateTable(names, reference, extra_columns=["passes_filter"] if keep else [])
    triage = Triage(keep, ranking, predicted) if keep or rank or args.top_png else None
    recorder = None
    if args.trajectory or args.trajectory_png:
        recorder = TrajectoryRecorder(module, (args.trajectory_molecules or DEFAULT_MOLECULES) if args.trajectory else 1)

    if args.compile:
        from sci_diffusion.compilation import compiler_missing

        problem = compiler_missing()
        if problem:
            raise UserError(problem)
    spacing = resolve_spacing(args.sampler, args.spacing)
    tags = {"sampler": args.sampler, "steps": args.steps, "spacing": spacing, "seed": args.seed,
            "precision": args.precision, "compiled": int(args.compile),
            "checkpoint": str(ckpt), "checkpoint_sha256": module.checkpoint_hash,
            "generator": f"sci-diffusion {sci_diffusion.__version__}", "SYNTHETIC": 1}
    if conditional:
        tags.update({"guidance": args.guidance, "gradient_guidance": args.gradient_guidance})
        if args.guidance_interval:
            tags["guidance_interval"] = ",".join(f"{v:g}" for v in args.guidance_interval)
    start, failed, drawn = time.perf_counter(), 0, []
    # No autograd graph while sampling, restored on the way out (an in-process caller keeps its own mode).
    with torch.set_grad_enabled(False), MoleculeWriter(out, chunk_size=args.batch_size, bonds=args.bonds) as writer:
        stream = sample_molecules(module, counts, args.sampler, args.steps, gen, args.batch_size, cond=cond,
                                  guidance=guidance, precision=args.precision, spacing=spacing, callback=recorder,
                                  compile_network=args.compile)
        progress = tqdm(total=args.num, desc="molecules", disable=not args.progress)
        for first in range(0, args.num, args.batch_size):
            chunk = [next(stream) for _ in range(min(args.batch_size, args.num - first))]
            predictions = predict_properties(classifier, chunk) if classifier is not None else None
            for k, molecule in enumerate(chunk):
                z, pos, charges = as_molecule(molecule)  # charges: None unless the model diffuses them
                i = first + k
                progress.update()
                target = None if values is None else _aligned(list(values[i]), conditioning.names, names)
                prediction = None if predictions is None else _aligned(list(predictions[k]), classifier.properties, names)
                if not np.isfinite(pos).all():
                    failed += 1  # a diverged sample cannot be written as a molecule, but it counts as a failure
                    row = table.add(i, z, pos, target, None)
                else:
                    writer.write(z, pos, {**tags, "index": i, **_property_fields(names, target, prediction)}, charges)
                    row = table.add(i, z, pos, target, prediction, charges)
                    if len(drawn) < 16:
                        drawn.append(molecule)
                if triage is not None:
                    triage.see(row, molecule)
            release_freed_memory()  # resident memory bounded however many batches (sci_diffusion.memory)
        progress.close()
    seconds = time.perf_counter() - start
    csv_path = out.with_suffix(".csv")
    table.write_csv(csv_path)
    mae = table.mean_absolute_error()
    rows = table.rows
    summary = {"samples": str(out), "candidates": str(csv_path), "written": args.num - failed,
               "failed_non_finite": failed, "seconds": round(seconds, 3),
               "molecules_per_second": round(args.num / seconds, 3),
               "stable_fraction": sum(r["stable"] for r in rows) / max(len(rows), 1),
               "valid_fraction": sum(r["valid"] for r in rows) / max(len(rows), 1),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "checkpoint": str(ckpt), "model": kind, **tags}
    if conditional:
        summary.update({"condition": targets if targets is not None else f"drawn from {args.condition_from}",
                        "classifier": None if classifier is None else classifier.checkpoint_path,
                        "regressor": args.regressor if args.gradient_guidance else None,
                        "mae_against_target": mae, "units": {n: PROPERTY_UNITS[n] for n in names}})
    summary["diversity"] = diversity_summary(r["smiles"] for r in rows if r["valid"])
    if triage is not None:
        summary.update(_write_triage(table, triage, out, args.top_png))
    if recorder is not None:
        summary["trajectory"] = _write_trajectory(recorder, args)
    write_json(out.with_suffix(out.suffix + ".json"), summary)
    if args.png:
        draw_grid_png(drawn, args.png, legends=[f"#{i}" for i in range(len(drawn))])
    diverged = f"; {failed} diverged (non-finite coordinates), counted as unstable and invalid" if failed else ""
    print(f"wrote {summary['written']} molecules to {out} in {seconds:.1f} s "
          f"({summary['molecules_per_second']:.1f} molecules/s){diverged}")
    if conditional:
        print(table.preview(10))
        for name, value in mae.items():
            unit = PROPERTY_UNITS[name]
            extra = f" ({1000 * value:.0f} meV)" if unit == "eV" else ""
            scored = sum(r[f"predicted_{name} [{unit}]"] != "" for r in rows)  # diverged samples have no prediction
            print(f"MAE of the classifier's {name} against the target: {value:.3f} {unit}{extra} over {scored} molecules; "
                  f"{100 * summary['stable_fraction']:.0f} % stable")
        print(f"candidates table: {csv_path}")
    diversity = summary["diversity"]
    if diversity["mean_pairwise_tanimoto_distance"] is not None:
        sampled = f" (a seeded sample of {diversity['unique_valid']})" if diversity["subsampled"] else ""
        print(f"diversity: mean pairwise Tanimoto distance {diversity['mean_pairwise_tanimoto_distance']:.3f} over "
              f"{diversity['molecules']} unique valid molecules{sampled}")
    if triage is not None:
        passed = "" if keep is None else f"--filter {keep.text!r}: {summary['filter']['passed']} of {len(rows)} passed; "
        print(f"{passed}candidates ranked by {ranking.description} in {summary['filter']['filtered_candidates']}")
    sys.stdout.flush()
    return 0


def _write_triage(table, triage, out: Path, top_png: str | None) -> dict:
    """The ranked (filtered) candidates as ``<out>.filtered.csv`` and the --top-png grid; returns
    their part of the run's summary."""
    import sys

    from ..chem.files import draw_grid_png
    from ..evaluation.triage import legend

    ranked = triage.ranked(table.rows)
    filtered = out.with_suffix(".filtered.csv")
    table.write_csv(filtered, ranked, extra_columns=["rank"])
    part = {"filter": {"expression": None if triage.keep is None else triage.keep.text, "passed": len(ranked),
                       "of": len(table.rows), "filtered_candidates": str(filtered)},
            "ranking": triage.ranking.description, "top_png": None}
    best = triage.top.best()
    if top_png and best:
        draw_grid_png([molecule for molecule, _ in best], top_png, size=300,  # with formal charges, if any
                      legends=[legend(row, triage.predicted) for _, row in best])
        part["top_png"] = str(top_png)
    elif top_png:
        print(f"sci-diffusion: warning: no candidate passed --filter, so {top_png} was not drawn.", file=sys.stderr)
    return part


def _write_trajectory(recorder, args: argparse.Namespace) -> dict:
    """The --trajectory XYZ files and the --trajectory-png strip; returns their part of the run's summary."""
    from ..generation.trajectory import draw_strip_png, write_trajectories

    part = {"molecules": recorder.recorded, "frames_per_molecule": args.steps, "x_t": None, "x0_hat": None, "png": None}
    if args.trajectory:
        x_t, x0 = write_trajectories(recorder, args.trajectory)
        part.update({"x_t": str(x_t), "x0_hat": str(x0)})
    if args.trajectory_png:
        part["png"] = str(draw_strip_png(recorder.frames["x_t"][0], args.trajectory_png, args.steps))
    return part


def _property_fields(names: list[str], target: list[float] | None, prediction: list[float] | None) -> dict[str, str]:
    """A record's ``target_<p>``, ``predicted_<p>`` (where finite) and ``unit_<p>`` fields."""
    from ..data.qm9 import PROPERTY_UNITS

    fields = {}
    for j, name in enumerate(names):
        if target is not None and math.isfinite(target[j]):
            fields[f"target_{name}"] = f"{target[j]:.6g}"
        if prediction is not None and math.isfinite(prediction[j]):
            fields[f"predicted_{name}"] = f"{prediction[j]:.6g}"
        fields[f"unit_{name}"] = PROPERTY_UNITS[name]
    return fields


def _aligned(row: list[float], row_names: list[str], names: list[str]) -> list[float]:
    """Values of ``row`` (ordered as ``row_names``) laid out in ``names`` order, NaN where missing."""
    return [float(row[row_names.index(n)]) if n in row_names else float("nan") for n in names]


def _generating_checkpoint(properties: dict) -> str | None:
    """The checkpoint a record of ``sample molecules`` names (``checkpoint``), if that file still holds the
    model of the record's ``checkpoint_sha256``; None otherwise."""
    from sci_diffusion.checkpoints import file_sha256

    path = properties.get("checkpoint")
    if not path or not Path(path).is_file():
        return None
    return path if file_sha256(path) == properties.get("checkpoint_sha256") else None


def novelty_reference(module) -> frozenset[str]:
    """The SMILES a model's samples are novel against: its own training set's, stored in the checkpoint
    of a model trained on custom data, or QM9's train split (cached after the first call)."""
    if getattr(module, "training_smiles", None) is not None:
        return frozenset(module.training_smiles)
    from ..data.qm9 import train_smiles

    return train_smiles()


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", required=True, help="an .sdf or .xyz file (any tool's output; SDF bonds are ignored)")
    p.add_argument("--out", required=True, help="metrics JSON")
    p.add_argument("--novelty", action=argparse.BooleanOptionalAction, default=True,
                   help="compare with the training SMILES: those of --ckpt's training set, or QM9's train split "
                        "(cached after the first run)")
    p.add_argument("--ckpt", help="the molecules checkpoint that generated the samples: novelty is measured against "
                                  "its own training set (a model trained on custom data stores it); default: the "
                                  "checkpoint the records name, if it is still there with the same sha256")
    p.add_argument("--classifier", help="property classifier for the MAE against the targets that sample molecules "
                                        "writes into each record (target_<property>); default for gap targets: the "
                                        "bundled gap classifier")


def run_evaluate(args: argparse.Namespace) -> int:
    from sci_diffusion.checkpoints import load_module

    from ..chem.files import read_molecules
    from ..data.qm9 import train_smiles
    from ..evaluation.evaluate_file import evaluate_file

    if not Path(args.samples).is_file():
        raise UserError(f"Samples file {args.samples} does not exist.")
    try:
        first = read_molecules(args.samples)[:1]
    except ValueError as exc:
        raise UserError(str(exc)) from None
    classifier = None
    if args.classifier:
        classifier = _property_model(args.classifier, "property_classifier")
    else:
        if first and "target_gap" in first[0][2]:
            path = bundled_checkpoint("sci_diffusion_molecules", "classifier", "--classifier")
            classifier = _property_model(path, "property_classifier")
    reference, described = None, None
    if args.novelty:
        ckpt = args.ckpt or _generating_checkpoint(first[0][2] if first else {})
        module = load_module(ckpt, domain="molecules") if ckpt else None
        reference = novelty_reference(module) if module is not None else train_smiles()
        described = (f"the training set of {ckpt} ({len(reference)} SMILES)"
                     if module is not None and module.training_smiles is not None else "QM9's EDM train split")
    try:
        metrics = evaluate_file(args.samples, args.out, reference, classifier, novelty_reference=described)
    except ValueError as exc:  # MoleculeFileError, UnknownElementError: already one clear sentence
        raise UserError(str(exc)) from None
    keys = ("atom_stability", "molecule_stability", "validity", "uniqueness", "validity_x_uniqueness", "novelty",
            "property_mae")
    print(json.dumps({k: metrics[k] for k in keys if k in metrics}, indent=2))
    return 0
