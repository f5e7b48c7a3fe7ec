"""``sci-diffusion sample molecules``: draw 3D molecules from a trained model into an SDF or XYZ file.

:func:`run_sample` reads as the list of its steps, each a function below in the order the run takes
them: check the flags (``sample_checks.py``), choose the checkpoint, load and check the model, draw
the sizes and targets, build the guidance, the classifier, the candidates table and triage and the
trajectory recorder, sample and write, then write the summary and print the report. ``--smiles``
and ``--fix-atoms`` sample otherwise (``inpainting.py``). The flags are ``arguments.py``'s.

The order of the random draws is part of the output: the seeded generator draws the atom counts
(or the sizes and targets of ``--condition-from db``) first, then one seed per molecule
(``generation/sampling.py``); swapping them changes every molecule.
"""
from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

import sci_diffusion
from sci_diffusion.atomic import write_json
from sci_diffusion.checkpoints import bundled_checkpoint, load_module
from sci_diffusion.compilation import compiler_missing
from sci_diffusion.errors import UserError
from sci_diffusion.generators import per_sample_seeds
from sci_diffusion.memory import release_freed_memory
from sci_diffusion.names import DISTILLED_SAMPLER_NAMES
from sci_diffusion.precision import resolve_precision
from sci_diffusion.report.command import check_report_path
from sci_diffusion.samplers import resolve_spacing
from sci_diffusion.shards import shard_range

from ..chem.elements import QM9_ELEMENTS
from ..chem.files import MoleculeWriter, copy_records, draw_grid_png
from ..chem.stability import as_molecule
from ..data.conditioning import PropertyConditioning
from ..data.qm9 import PROPERTY_UNITS
from ..evaluation.candidates import CandidateTable
from ..evaluation.metrics import novelty_reference
from ..evaluation.triage import CandidateExpression, Ranking, Triage, diversity_summary, legend
from ..evaluation.xtb_candidates import (
    KEPT,
    RELAXED,
    TARGET_GAP,
    XTB_COLUMNS,
    XTB_GAP,
    XTB_GAP_RELAXED,
    closest_to_target,
    gap_errors,
    relax_rows,
    rows_to_relax,
    written_gap_scores,
)
from ..evaluation.xtb_gap import SCALE_PATH as XTB_SCALE_PATH
from ..evaluation.xtb_gap import GapScale, read_gap_scale
from ..generation.bond_sampling import draw_molecules
from ..generation.sampling import Expert, Guidance, draw_atom_counts
from ..generation.trajectory import DEFAULT_MOLECULES, TrajectoryRecorder, draw_strip_png, write_trajectories
from ..models.diffusion import MoleculeDiffusion
from ..models.property_model import PropertyPredictor, load_property_model, predict_properties
from ..report.page import write_report
from .inpainting import run_inpainting_sample
from .sample_checks import check_sample_arguments, check_triage_arguments, refuse_triage_flags

GRID_MOLECULES = 16  # drawn into --png


@dataclass
class Candidates:
    """What a run records of every molecule beside its atoms.

    Attributes:
        names: the properties in the records and the table: the condition's, then the classifier's others.
        classifier: the property classifier whose predictions go in (None: no predictions).
        table: one row per molecule (``evaluation/candidates.py``).
        triage: the --filter/--rank/--top-png bookkeeping, None when none of them is given.
        ranking: how the filtered candidates are ranked.
        keep: the --filter expression, or None.
    """

    names: list[str]
    classifier: PropertyPredictor | None
    table: CandidateTable
    triage: Triage | None
    ranking: Ranking
    keep: CandidateExpression | None


@dataclass
class SampleRun:
    """Everything a ``sample molecules`` run decided before its first molecule is drawn.

    Attributes:
        counts: the atom count of every molecule, ``(num,)``.
        values: ``(num, P)`` targets in property units (the conditioning's order), or None.
        cond: ``(num, P + 1)`` the network's condition rows, or None.
        tags: the fields every written record carries (sampler, seed, checkpoint, ...).
    """

    args: argparse.Namespace
    ckpt: Path
    module: MoleculeDiffusion
    conditional: bool
    targets: dict[str, float] | None
    counts: list[int]
    values: np.ndarray | None
    cond: Tensor | None
    guidance: Guidance | None
    candidates: Candidates
    recorder: TrajectoryRecorder | None
    tags: dict
    xtb_scale: GapScale | None = None  # --xtb: the line that maps xTB gaps onto QM9's DFT scale
    drawn_path: Path | None = None  # --oversample: where every drawn molecule goes (--out gets the kept ones)
    xtb_molecules: dict[int, tuple] = field(default_factory=dict)  # --xtb: index -> (z, pos, charges), to relax
    relax_asked: int | None = None  # --xtb: how many molecules relax_candidates chose to relax
    expert: Expert | None = None  # --expert: the low-noise expert that answers at t <= --expert-below
    first: int = 0  # --shard: the run index of the part's first molecule (records and table rows carry run indices)
    seeds: list[int] = field(default_factory=list)  # each molecule's seed, from --seed (generators.per_sample_seeds)


def run_sample(args: argparse.Namespace) -> int:
    """``sample molecules``: ``--num`` molecules to ``--out``, the candidates table beside it (.csv), the
    run's summary (.json) and the pictures and trajectory asked for; prints a short report."""
    check_report_path(args.report)  # refused before any sampling
    args.precision = resolve_precision(args.precision)  # auto: bf16 where the CPU has bf16 instructions, else fp32
    if (args.smiles or args.fix_atoms) and args.shard:
        raise UserError("--shard splits a run of generated molecules; conformers and inpainting run without it.")
    if args.smiles or args.fix_atoms:
        refuse_triage_flags(args)
        return run_inpainting_sample(args) or write_run_report(args)
    targets = check_sample_arguments(args)
    keep, rank = check_triage_arguments(args)
    conditional = targets is not None or args.condition_from is not None
    ckpt = choose_checkpoint(args, targets, conditional)
    module = load_generator(ckpt, args, conditional)
    expert = load_expert(args, module)
    asked = args.num
    args.num *= args.oversample  # --oversample: draw F times as many, keep --num of them (keep_closest_by_xtb)
    gen = torch.Generator().manual_seed(args.seed)
    counts, values = draw_sizes_and_targets(module, ckpt, args, targets, gen)  # the generator's first draws
    seeds = per_sample_seeds(gen, len(counts))  # then one seed per molecule, the same for every --shard
    part = shard_range(args.shard, args.num)  # --shard: the run's molecules part.start .. part.stop - 1
    counts, seeds, args.num = counts[part.start:part.stop], seeds[part.start:part.stop], len(part)
    values = None if values is None else values[part.start:part.stop]
    conditioning = module.property_conditioning
    cond = None if values is None else conditioning.condition(torch.from_numpy(values))
    guidance = build_guidance(args, conditioning) if conditional else None
    classifier = load_classifier(args, module, conditional)
    candidates = build_candidates(args, module, conditional, values, classifier, keep, rank)
    recorder = trajectory_recorder(args, module, cond)
    problem = compiler_missing() if args.compile else None
    if problem:
        raise UserError(problem)
    run = SampleRun(args, ckpt, module, conditional, targets, counts, values, cond, guidance, candidates, recorder,
                    record_tags(args, ckpt, module, conditional, expert), read_gap_scale() if args.xtb else None,
                    drawn_file(args.out) if args.oversample > 1 else None, first=part.start, seeds=seeds,
                    expert=expert)
    failed, drawn, seconds = sample_and_write(run)
    if run.xtb_scale is not None:
        seconds += relax_candidates(run, asked)
    kept = keep_closest_by_xtb(run, asked) if run.drawn_path is not None else None
    summary = write_summary(run, failed, drawn, seconds, kept)
    print_report(run, summary, failed, seconds)
    return write_run_report(args)


def write_run_report(args: argparse.Namespace) -> int:
    """The --report page of the written run (``report/page.py``), if asked for; returns the exit status, 0."""
    if args.report:
        print(write_report(Path(args.out), Path(args.report)))
    return 0


def choose_checkpoint(args: argparse.Namespace, targets: dict[str, float] | None, conditional: bool) -> Path:
    """``--ckpt``, or the bundled model that fits the run: the gap-conditioned one for a condition on the
    gap, else the unconditional model that ``--model`` names (without it, ``DEFAULT_MODEL``: the bond-aware one)."""
    if args.ckpt:
        return Path(args.ckpt)
    if not conditional:
        return bundled_checkpoint("sci_diffusion_molecules", args.model or "unconditional")
    other_kind = args.model not in (None, "edm")  # latent or bonds: the bundled ones are unconditional
    if other_kind:
        raise UserError(f"The bundled {args.model} model is unconditional; pass --ckpt with a conditional {args.model} "
                        f"model, or drop --model {args.model} to use the bundled gap-conditioned EDM model.")
    if targets is not None and set(targets) != {"gap"}:
        raise UserError(f"The bundled conditional model is conditioned on gap only, not on "
                        f"{', '.join(sorted(set(targets) - {'gap'}))}; pass --ckpt.")
    return bundled_checkpoint("sci_diffusion_molecules", "gap")


def load_generator(ckpt: Path, args: argparse.Namespace, conditional: bool) -> MoleculeDiffusion:
    """The model of ``ckpt``, checked against the flags: a molecule generator of the ``--model`` kind, not a
    conformer model, diffusing atoms for gradient guidance, and conditioned when a condition is given."""
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
    if conditional and module.property_conditioning is None:
        raise UserError(f"Checkpoint {ckpt} is not conditioned on any property; it samples without --condition.")
    if kind == "bonds":
        refuse_for_bond_model(args, ckpt)
    return module


def load_expert(args: argparse.Namespace, module: MoleculeDiffusion) -> Expert | None:
    """``--expert CKPT`` (``bundled``: the bundled default's, ``qm9_bonds_x0_expert.ckpt``) as the ``Expert`` of
    ``module`` that answers at ``t <= --expert-below`` (``Expert.of`` checks both); None without it."""
    if not args.expert:
        return None
    if args.expert == "bundled":  # the bundled default's own expert
        args.expert = str(bundled_checkpoint("sci_diffusion_molecules", "bonds_expert"))
    return Expert.of(module, load_module(args.expert, domain="molecules"), args.expert_below)


BOND_SAMPLERS = ("ddpm", "dpmpp2m_sde", "ddim")  # the samplers with a categorical step (sci_diffusion.samplers)
# and the consistency sampler's (a categorical step too), which distilled_times leaves to a consistency student
BOND_STUDENT_SAMPLERS = (*BOND_SAMPLERS, *DISTILLED_SAMPLER_NAMES)


def refuse_for_bond_model(args: argparse.Namespace, ckpt: Path) -> None:
    """The flags the bond-aware model cannot serve yet, refused in one sentence before any sampling."""
    if args.sampler not in BOND_STUDENT_SAMPLERS:
        raise UserError(f"Checkpoint {ckpt} holds the bond-aware model, whose bond orders need a sampler with a "
                        f"categorical step ({', '.join(BOND_SAMPLERS)}), not {args.sampler} (--model edm samples with it).")
    used = [flag for flag, on in (("--trajectory", args.trajectory), ("--trajectory-png", args.trajectory_png)) if on]
    if used:
        raise UserError(f"Checkpoint {ckpt} holds the bond-aware model, which samples without {', '.join(used)} for now; "
                        "--model edm samples with them.")


def draw_sizes_and_targets(module: MoleculeDiffusion, ckpt: Path, args: argparse.Namespace,
                           targets: dict[str, float] | None,
                           gen: torch.Generator) -> tuple[list[int], np.ndarray | None]:
    """Every molecule's atom count and its targets ``(num, P)`` in property units (None: unconditional).

    ``--condition-from db`` draws sizes and targets jointly from the training set; otherwise the sizes
    are ``--atoms`` or drawn from the model's atom-count histogram, and a ``--condition`` is every
    molecule's target (a warning on stderr for each value outside the training range).
    """
    conditioning = module.property_conditioning
    if args.condition_from:
        counts, values = conditioning.draw_joint(args.num, gen)
        return counts, values.numpy()
    if args.atoms is not None:
        counts = [args.atoms] * args.num
    elif module.atom_count_histogram:
        counts = draw_atom_counts(module.atom_count_histogram, args.num, gen)
    else:
        raise UserError(f"Checkpoint {ckpt} has no atom-count histogram; pass --atoms.")
    if targets is None:
        return counts, None
    target = conditioning.targets_from_mapping(targets)
    for problem in conditioning.outside_training_range(target):
        print(f"sci-diffusion: warning: {problem}; the model has seen no such molecule, so expect a poor match.",
              file=sys.stderr)
    return counts, np.repeat(target[None], args.num, axis=0)


def build_guidance(args: argparse.Namespace, conditioning: PropertyConditioning) -> Guidance | None:
    """Classifier-free and/or gradient guidance of a conditional run (None: the plain conditional model).

    Raises:
        UserError: ``--regressor`` is not a property regressor, or does not predict every conditioned property.
    """
    if args.guidance == 1.0 and not args.gradient_guidance:
        return None
    regressor = load_property_model(args.regressor, "property_regressor") if args.gradient_guidance else None
    if regressor is not None and not set(conditioning.names) <= set(regressor.properties):
        raise UserError(f"Regressor {args.regressor} predicts {', '.join(regressor.properties)}, not all of "
                        f"{', '.join(conditioning.names)}.")
    return Guidance(args.guidance, regressor, args.gradient_guidance, args.guidance_interval or (0.0, 1.0))


def load_classifier(args: argparse.Namespace, module: MoleculeDiffusion, conditional: bool) -> PropertyPredictor | None:
    """``--classifier``, or for a run conditioned on the gap alone the bundled gap classifier; None otherwise."""
    if args.classifier and module.element_set != QM9_ELEMENTS:
        raise UserError(f"The property classifiers read QM9's elements only, not this model's "
                        f"{module.element_set.describe()}; drop --classifier.")
    if args.classifier or (conditional and module.property_conditioning.names == ["gap"]):
        path = args.classifier or bundled_checkpoint("sci_diffusion_molecules", "classifier", "--classifier")
        return load_property_model(path, "property_classifier")
    return None


def build_candidates(args: argparse.Namespace, module: MoleculeDiffusion, conditional: bool, values: np.ndarray | None,
                     classifier: PropertyPredictor | None, keep: CandidateExpression | None,
                     rank: CandidateExpression | None) -> Candidates:
    """The candidates table and the triage of a run, once the --filter and --rank expressions are checked
    against the columns the run will have."""
    conditioning = module.property_conditioning
    predicted = classifier.properties if classifier is not None else []
    names = list(conditioning.names) if conditional else []
    names += [n for n in predicted if n not in names]
    target_names = list(conditioning.names) if values is not None else []
    for expression in (keep, rank):
        if expression is not None:
            expression.check_run(target_names, predicted, args.novelty)
    ranking = Ranking(f"{rank.text} ascending", rank) if rank else Ranking.default(target_names, predicted)
    reference = novelty_reference(module) if args.novelty else None
    if args.oversample > 1 and "gap" not in target_names:
        raise UserError("--oversample keeps candidates by their xTB gap against their gap target; this run's targets "
                        f"are {', '.join(target_names) or 'none'}: sample a gap-conditioned model with --condition "
                        "gap=VALUE or --condition-from db.")
    extra = (["passes_filter"] if keep else []) + (list(XTB_COLUMNS) if args.xtb else []) + \
        ([KEPT] if args.oversample > 1 else [])
    table = CandidateTable(names, reference, extra_columns=extra)
    triage = Triage(keep, ranking, predicted) if keep or rank or args.top_png else None
    return Candidates(names, classifier, table, triage, ranking, keep)


def trajectory_recorder(args: argparse.Namespace, module: MoleculeDiffusion,
                        cond: torch.Tensor | None) -> TrajectoryRecorder | None:
    """The recorder of --trajectory (its molecules) or --trajectory-png (the first molecule); None without them."""
    if not (args.trajectory or args.trajectory_png):
        return None
    return TrajectoryRecorder(module, (args.trajectory_molecules or DEFAULT_MOLECULES) if args.trajectory else 1, cond=cond)


def record_tags(args: argparse.Namespace, ckpt: Path, module: MoleculeDiffusion, conditional: bool,
                expert: Expert | None = None) -> dict:
    """The fields every written record carries: how it was sampled, from which checkpoint (and low-noise expert),
    and SYNTHETIC."""
    tags = {"sampler": args.sampler, "steps": args.steps, "spacing": resolve_spacing(args.sampler, args.spacing),
            "seed": args.seed, "precision": args.precision, "compiled": int(args.compile),
            "checkpoint": str(ckpt), "checkpoint_sha256": module.checkpoint_hash,
            "generator": f"sci-diffusion {sci_diffusion.__version__}", "SYNTHETIC": 1}
    if args.restart_plan is not None:
        plan = args.restart_plan
        tags["restarts"] = f"{plan.count} from t = {plan.t_max:g}, {plan.steps} steps each"
    if args.polish_plan is not None:
        tags["polish"] = f"{args.polish_plan.iterations} at t = {args.polish_plan.t:g}"
    if expert is not None:
        tags["expert"] = f"{args.expert} (sha256 {expert.module.checkpoint_hash}) at t <= {expert.below:g}"
    if conditional:
        tags.update({"guidance": args.guidance, "gradient_guidance": args.gradient_guidance})
        if args.guidance_interval:
            tags["guidance_interval"] = ",".join(f"{v:g}" for v in args.guidance_interval)
    return tags


def sample_and_write(run: SampleRun) -> tuple[int, list[tuple], float]:
    """Sample ``--batch-size`` molecules at a time and write each as it comes: to ``--out`` (a diverged one,
    with non-finite coordinates, only to the table) and to the candidates table.

    Returns:
        The number of diverged molecules, the first written ones (for --png) and the seconds it took.
    """
    args, classifier = run.args, run.candidates.classifier
    start, failed, drawn = time.perf_counter(), 0, []
    # No autograd graph while sampling, restored on the way out (an in-process caller keeps its own mode).
    with torch.set_grad_enabled(False), MoleculeWriter(run.drawn_path or Path(args.out), chunk_size=args.batch_size,
                                                       bonds=args.bonds) as writer:
        # a bond-aware model's molecules carry their generated bonds: (z, pos, charges, bonds)
        stream = draw_molecules(run.module, run.counts, args.sampler, args.steps, None, args.batch_size, args.precision,
                                args.compile, run.cond, run.guidance, run.tags["spacing"], run.seeds, run.recorder,
                                args.restart_plan, args.polish_plan, run.expert)
        progress = tqdm(total=args.num, desc="molecules", disable=not args.progress)
        for first in range(0, args.num, args.batch_size):
            chunk = [next(stream) for _ in range(min(args.batch_size, args.num - first))]
            predictions = predict_properties(classifier, chunk) if classifier is not None else None
            for k, molecule in enumerate(chunk):
                progress.update()
                prediction = None if predictions is None else predictions[k]
                if not record_molecule(run, writer, run.first + first + k, molecule, prediction):
                    failed += 1  # a diverged sample cannot be written as a molecule, but it counts as a failure
                elif len(drawn) < GRID_MOLECULES:
                    drawn.append(molecule)
            release_freed_memory()  # resident memory bounded however many batches (sci_diffusion.memory)
        progress.close()
    return failed, drawn, time.perf_counter() - start


def record_molecule(run: SampleRun, writer: MoleculeWriter, i: int, molecule: tuple,
                    prediction: np.ndarray | None) -> bool:
    """Molecule ``i`` into the file (unless it diverged), the candidates table and the triage; returns
    whether it was written (its coordinates are finite)."""
    candidates = run.candidates
    z, pos, charges = as_molecule(molecule)  # charges: None unless the model diffuses them
    bonds = molecule[3] if len(molecule) > 3 else None  # a bond-aware model's own bond classes
    target = None
    if run.values is not None:
        target = _aligned(list(run.values[i - run.first]), run.module.property_conditioning.names, candidates.names)
    if prediction is not None:
        prediction = _aligned(list(prediction), candidates.classifier.properties, candidates.names)
    finite = bool(np.isfinite(pos).all())
    if finite:
        writer.write(z, pos, {**run.tags, "index": i, **_property_fields(candidates.names, target, prediction)}, charges,
                     bonds)
        row = candidates.table.add(i, z, pos, target, prediction, charges)
        if run.xtb_scale is not None:  # the written gap now; the relaxation after the last batch (relax_candidates)
            row.update(written_gap_scores(z, pos, run.xtb_scale, charges))
            run.xtb_molecules[i] = (z, pos, charges)
    else:
        row = candidates.table.add(i, z, pos, target, None)
    if candidates.triage is not None:
        candidates.triage.see(row, molecule)
    return finite


def _property_fields(names: list[str], target: list[float] | None, prediction: list[float] | None) -> dict[str, str]:
    """A record's ``target_<p>``, ``predicted_<p>`` (where finite) and ``unit_<p>`` fields."""
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


def drawn_file(out: str) -> Path:
    """Where ``--oversample`` writes every drawn molecule: ``<out>.drawn.sdf`` (or ``.xyz``) beside ``--out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.drawn{out.suffix}")


def may_be_kept(run: SampleRun):
    """``row -> bool``: whether a table row can be kept by ``--oversample`` (not failed, and through ``--filter``)."""
    triage = run.candidates.triage
    filtered = triage is not None and triage.keep is not None
    return lambda row: not row["failed"] and (not filtered or row["passes_filter"])


def relax_candidates(run: SampleRun, asked: int) -> float:
    """--xtb: relax the molecules whose written gap was computed (with --oversample, only the ``--xtb-screen`` x
    asked that may be kept and lie closest to their target by that gap: ``xtb_candidates.rows_to_relax``) in
    ``--xtb-workers`` processes, and fill their rows' relaxed cells. Returns the seconds it took."""
    start, args, rows = time.perf_counter(), run.args, run.candidates.table.rows
    oversampled = run.drawn_path is not None
    indices = rows_to_relax(rows, asked if oversampled else None, args.xtb_screen, may_be_kept(run))
    run.relax_asked = len(indices)
    progress = tqdm(total=len(indices), desc="xTB relaxations", disable=not args.progress)
    results = relax_rows(run.xtb_molecules, indices, run.xtb_scale, args.xtb_workers, progress.update)
    progress.close()
    by_index = {row["index"]: row for row in rows}
    for i, cells in results.items():
        by_index[i].update(cells)
    return time.perf_counter() - start


def keep_closest_by_xtb(run: SampleRun, asked: int) -> list[int]:
    """``--oversample``: the ``asked`` drawn molecules whose relaxed xTB gap lies closest to their gap target, among
    those that passed ``--filter`` (``xtb_candidates.closest_to_target``), copied from the drawn file to ``--out``;
    each table row gains ``kept_by_xtb``. Returns the kept indices."""
    table = run.candidates.table
    kept = closest_to_target(table.rows, TARGET_GAP, asked, may_be_kept(run))
    for row in table.rows:
        row[KEPT] = int(row["index"] in kept)
    copy_records(run.drawn_path, run.args.out, kept)
    if len(kept) < asked:
        print(f"sci-diffusion: warning: only {len(kept)} of the {len(table.rows)} drawn molecules had a relaxed xTB gap "
              f"(and passed --filter), fewer than the {asked} asked for; {run.args.out} holds those.", file=sys.stderr)
    return kept


def xtb_summary(run: SampleRun, kept: list[int] | None) -> dict:
    """The --xtb part of the run's summary: the mapping used, how many molecules xTB scored, and for a run with gap
    targets the median |relaxed xTB gap - target| of the written (kept) molecules."""
    rows = run.candidates.table.rows
    written = [r for r in rows if kept is None or r["index"] in kept]
    part = {"gap_scale": str(XTB_SCALE_PATH), "gap_scale_check_mae_ev": run.xtb_scale.mae_ev,
            "gap_scored": sum(r.get(XTB_GAP, "") != "" for r in rows),
            "scored": sum(r.get(XTB_GAP_RELAXED, "") != "" for r in rows), "of": len(rows),
            "relaxed": sum(r.get(RELAXED, 0) == 1 for r in rows), "relaxation_workers": run.args.xtb_workers,
            "screen": run.args.xtb_screen if kept is not None else None, "relaxed_asked": run.relax_asked}
    if TARGET_GAP in run.candidates.table.columns:
        errors = gap_errors(written)
        part["median_abs_xtb_gap_error_ev"] = float(np.median(errors)) if errors.size else None
    if kept is not None:
        part.update(oversample=run.args.oversample, drawn=len(rows), kept=len(kept), drawn_file=str(run.drawn_path))
    return part


def write_summary(run: SampleRun, failed: int, drawn: list[tuple], seconds: float, kept: list[int] | None = None) -> dict:
    """The candidates table (.csv), the filtered candidates, the trajectory files, the run's summary (.json
    beside ``--out``) and the --png grid; returns the summary."""
    args, candidates = run.args, run.candidates
    out = Path(args.out)
    csv_path = out.with_suffix(".csv")
    candidates.table.write_csv(csv_path)
    rows = candidates.table.rows
    summary = {"samples": str(out), "candidates": str(csv_path), "written": args.num - failed,
               "failed_non_finite": failed, "seconds": round(seconds, 3),
               "molecules_per_second": round(args.num / seconds, 3),
               "stable_fraction": sum(r["stable"] for r in rows) / max(len(rows), 1),
               "valid_fraction": sum(r["valid"] for r in rows) / max(len(rows), 1),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "checkpoint": str(run.ckpt), "model": run.module.model_kind, **run.tags}
    if args.shard is not None:
        summary["shard"] = {"part": args.shard[0], "parts": args.shard[1], "first_index": run.first,
                            "last_index": run.first + args.num - 1}
    if run.conditional:
        classifier = candidates.classifier
        summary.update({"condition": run.targets if run.targets is not None else f"drawn from {args.condition_from}",
                        "classifier": None if classifier is None else classifier.checkpoint_path,
                        "regressor": args.regressor if args.gradient_guidance else None,
                        "mae_against_target": candidates.table.mean_absolute_error(),
                        "units": {n: PROPERTY_UNITS[n] for n in candidates.names}})
    if run.xtb_scale is not None:
        summary["xtb"] = xtb_summary(run, kept)
    if kept is not None:
        summary["written"] = len(kept)  # to --out; every drawn molecule is in summary["xtb"]["drawn_file"]
    summary["diversity"] = diversity_summary(r["smiles"] for r in rows if r["valid"])
    if candidates.triage is not None:
        summary.update(_write_triage(candidates.table, candidates.triage, out, args.top_png))
    if run.recorder is not None:
        summary["trajectory"] = _write_trajectory(run.recorder, args)
    write_json(out.with_suffix(out.suffix + ".json"), summary)
    if args.png:
        draw_grid_png(drawn, args.png, legends=[f"#{i}" for i in range(len(drawn))])
    return summary


def _write_triage(table: CandidateTable, triage: Triage, out: Path, top_png: str | None) -> dict:
    """The ranked (filtered) candidates as ``<out>.filtered.csv`` and the --top-png grid; returns
    their part of the run's summary."""
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


def _write_trajectory(recorder: TrajectoryRecorder, args: argparse.Namespace) -> dict:
    """The --trajectory XYZ files and the --trajectory-png strip; returns their part of the run's summary."""
    part = {"molecules": recorder.recorded, "frames_per_molecule": args.steps, "x_t": None, "x0_hat": None, "png": None}
    if args.trajectory:
        x_t, x0 = write_trajectories(recorder, args.trajectory)
        part.update({"x_t": str(x_t), "x0_hat": str(x0)})
    if args.trajectory_png:
        part["png"] = str(draw_strip_png(recorder.frames["x_t"][0], args.trajectory_png, args.steps))
    return part


def print_report(run: SampleRun, summary: dict, failed: int, seconds: float) -> None:
    """What a person reads on stdout: the count and speed, for a conditional run the candidates preview
    and the classifier's MAE, the diversity and the triage's outcome."""
    args, candidates = run.args, run.candidates
    rows = candidates.table.rows
    diverged = f"; {failed} diverged (non-finite coordinates), counted as unstable and invalid" if failed else ""
    print(f"wrote {summary['written']} molecules to {Path(args.out)} in {seconds:.1f} s "
          f"({summary['molecules_per_second']:.1f} molecules/s){diverged}")
    if run.conditional:
        kept = {r["index"] for r in rows if r.get(KEPT) == 1} if run.drawn_path is not None else None
        if kept is not None:  # --oversample: the ones written, with the classifier's and xTB's gaps side by side
            print(f"the {len(kept)} candidates kept by their relaxed xTB gap:")
        print(candidates.table.preview(10, kept))
        for name, value in summary["mae_against_target"].items():
            unit = PROPERTY_UNITS[name]
            extra = f" ({1000 * value:.0f} meV)" if unit == "eV" else ""
            scored = sum(r[f"predicted_{name} [{unit}]"] != "" for r in rows)  # diverged samples have no prediction
            print(f"MAE of the classifier's {name} against the target: {value:.3f} {unit}{extra} over {scored} molecules; "
                  f"{100 * summary['stable_fraction']:.0f} % stable")
        print(f"candidates table: {summary['candidates']}")
    if "xtb" in summary:
        xtb = summary["xtb"]
        line = f"GFN2-xTB gave the gap of {xtb['gap_scored']} of {xtb['of']} molecules and relaxed {xtb['scored']}"
        if xtb.get("screen"):
            line += f" (the {xtb['relaxed_asked']} closest to their target by that gap: --xtb-screen {xtb['screen']:g})"
        if xtb.get("median_abs_xtb_gap_error_ev") is not None:
            line += (f"; median |relaxed xTB gap - target| of the written ones {xtb['median_abs_xtb_gap_error_ev']:.2f} eV "
                     f"(the xTB-to-DFT line itself is off by {xtb['gap_scale_check_mae_ev']:.2f} eV on real molecules)")
        if "kept" in xtb:
            line += f"; kept {xtb['kept']} of {xtb['drawn']} drawn (every one in {xtb['drawn_file']})"
        print(line)
    diversity = summary["diversity"]
    if diversity["mean_pairwise_tanimoto_distance"] is not None:
        sampled = f" (a seeded sample of {diversity['unique_valid']})" if diversity["subsampled"] else ""
        print(f"diversity: mean pairwise Tanimoto distance {diversity['mean_pairwise_tanimoto_distance']:.3f} over "
              f"{diversity['molecules']} unique valid molecules{sampled}")
    if candidates.triage is not None:
        keep = candidates.keep
        passed = "" if keep is None else f"--filter {keep.text!r}: {summary['filter']['passed']} of {len(rows)} passed; "
        print(f"{passed}candidates ranked by {candidates.ranking.description} in {summary['filter']['filtered_candidates']}")
    sys.stdout.flush()
