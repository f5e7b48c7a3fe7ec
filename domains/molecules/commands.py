"""CLI verbs of the molecules domain: ``sample molecules`` and ``evaluate molecules``.

Heavy imports (torch-geometric, RDKit) happen inside ``run_*`` so ``sci-diffusion --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from importlib.resources import files
from pathlib import Path

from sci_diffusion.errors import UserError

SAMPLER_CHOICES = ("ddpm", "ddim", "dpmpp2m", "dpmpp2m_sde", "heun", "pc")
BUNDLED_CHECKPOINT = "checkpoints/qm9_edm_small.ckpt"


def bundled_checkpoint() -> Path:
    """The QM9 model that ships with the package (see ``checkpoints/README.md`` beside it)."""
    path = Path(str(files("sci_diffusion_molecules").joinpath(BUNDLED_CHECKPOINT)))
    if not path.is_file():
        raise UserError(f"The bundled molecules checkpoint {path} is missing; pass --ckpt.")
    return path


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", help="a molecules checkpoint (default: the bundled QM9 model)")
    p.add_argument("--num", type=int, default=100, help="molecules to draw")
    p.add_argument("--sampler", default="dpmpp2m_sde", choices=SAMPLER_CHOICES,
                   help="dpmpp2m_sde (default): stochastic DPM-Solver++ on a quadratic time grid; at 50 steps "
                        "as many stable molecules as ancestral ddpm at 1000, far more than the ODE form dpmpp2m "
                        "(see the benchmark)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (independent of the training T)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--atoms", type=int, help="atoms per molecule (default: drawn from the training histogram)")
    p.add_argument("--batch-size", type=int, default=100,
                   help="molecules sampled together (about 100 keeps a batch's edge tensors in cache)")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"),
                   help="network arithmetic: bfloat16 autocast (fast on AVX512-BF16 CPUs) or float32")
    p.add_argument("--bonds", default="edm", choices=("edm", "rdkit"), help="bond rule for the SDF bond block")
    p.add_argument("--out", required=True, help="output .sdf or .xyz (written in chunks, renamed when complete)")
    p.add_argument("--png", help="optional PNG grid of 2-D depictions of the first 16 molecules")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show progress")


def run_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    import sci_diffusion
    from sci_diffusion.atomic import write_json
    from sci_diffusion.checkpoints import load_module

    from .files import MoleculeWriter, draw_grid_png
    from .sampling import draw_atom_counts, sample_molecules

    out = Path(args.out)
    if out.suffix.lower() not in (".sdf", ".xyz"):
        raise UserError(f"--out {out} must end in .sdf or .xyz.")
    if args.num < 1 or args.steps < 1 or args.batch_size < 1:
        raise UserError("--num, --steps and --batch-size must be positive.")
    if args.atoms is not None and not 1 <= args.atoms <= 100:
        raise UserError(f"--atoms {args.atoms} is out of range; use 1 to 100 atoms.")
    ckpt = Path(args.ckpt) if args.ckpt else bundled_checkpoint()
    module = load_module(ckpt, domain="molecules")
    gen = torch.Generator().manual_seed(args.seed)
    if args.atoms is not None:
        counts = [args.atoms] * args.num
    elif module.atom_count_histogram:
        counts = draw_atom_counts(module.atom_count_histogram, args.num, gen)
    else:
        raise UserError(f"Checkpoint {ckpt} has no atom-count histogram; pass --atoms.")
    tags = {"sampler": args.sampler, "steps": args.steps, "seed": args.seed, "precision": args.precision,
            "checkpoint_sha256": module.checkpoint_hash,
            "generator": f"sci-diffusion {sci_diffusion.__version__}", "SYNTHETIC": 1}
    start, dropped, drawn = time.perf_counter(), 0, []
    torch.set_grad_enabled(False)
    with MoleculeWriter(out, chunk_size=args.batch_size, bonds=args.bonds) as writer:
        stream = sample_molecules(module, counts, args.sampler, args.steps, gen, args.batch_size,
                                  precision=args.precision)
        for i, (z, pos) in enumerate(tqdm(stream, total=args.num, desc="molecules", disable=not args.progress)):
            if not np.isfinite(pos).all():
                dropped += 1  # a diverged sample cannot be written as a molecule
                continue
            writer.write(z, pos, {**tags, "index": i})
            if len(drawn) < 16:
                drawn.append((z, pos))
    seconds = time.perf_counter() - start
    summary = {"samples": str(out), "written": args.num - dropped, "dropped_non_finite": dropped,
               "seconds": round(seconds, 3), "molecules_per_second": round(args.num / seconds, 3),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "checkpoint": str(ckpt), **tags}
    write_json(out.with_suffix(out.suffix + ".json"), summary)
    if args.png:
        draw_grid_png(drawn, args.png, legends=[f"#{i}" for i in range(len(drawn))])
    print(f"wrote {summary['written']} molecules to {out} in {seconds:.1f} s "
          f"({summary['molecules_per_second']:.1f} molecules/s)" + (f", dropped {dropped} non-finite" if dropped else ""))
    return 0


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", required=True, help="an .sdf or .xyz file (any tool's output; SDF bonds are ignored)")
    p.add_argument("--out", required=True, help="metrics JSON")
    p.add_argument("--novelty", action=argparse.BooleanOptionalAction, default=True,
                   help="compare with the QM9 training SMILES (cached after the first run)")


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_file
    from .qm9 import train_smiles

    if not Path(args.samples).is_file():
        raise UserError(f"Samples file {args.samples} does not exist.")
    try:
        metrics = evaluate_file(args.samples, args.out, train_smiles() if args.novelty else None)
    except ValueError as exc:  # MoleculeFileError, UnknownElementError: already one clear sentence
        raise UserError(str(exc)) from None
    keys = ("atom_stability", "molecule_stability", "validity", "uniqueness", "validity_x_uniqueness", "novelty")
    print(json.dumps({k: metrics[k] for k in keys}, indent=2))
    return 0
