"""``sample molecules --smiles`` (conformers of a molecule) and ``--fix-atoms`` (grow a fragment).

Called by ``sample.run_sample`` when either flag is given; the flags are checked before any
checkpoint is read, and every problem is one sentence and exit 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem

import sci_diffusion
from sci_diffusion.atomic import atomic_path, check_writable, write_json
from sci_diffusion.checkpoints import bundled_checkpoint, load_module
from sci_diffusion.errors import UserError
from sci_diffusion.names import DISTILLED_SAMPLER_NAMES

from ..chem.elements import ATOM_TYPES
from ..chem.files import MoleculeWriter
from ..generation.conformers import (
    InpaintingTask,
    fragment_rmsd,
    generate_conformers,
    graph_bonds,
    inpaint_molecules,
    molecule_from_smiles,
    perceived_bonds,
    with_conformer,
)

INCOMPATIBLE = ("condition", "condition_from", "regressor")


def check_inpainting_arguments(args: argparse.Namespace) -> None:
    if args.smiles and args.fix_atoms:
        raise UserError("Give either --smiles or --fix-atoms, not both.")
    for name in INCOMPATIBLE:
        if getattr(args, name, None):
            raise UserError(f"--{name.replace('_', '-')} does not combine with --smiles or --fix-atoms.")
    if args.guidance != 1.0 or args.gradient_guidance:
        raise UserError("Guidance does not combine with --smiles or --fix-atoms.")
    if args.model == "latent":
        raise UserError("--smiles and --fix-atoms need the EDM-style model, which diffuses atoms; drop --model latent.")
    if args.sampler in DISTILLED_SAMPLER_NAMES:
        raise UserError(f"The {args.sampler} sampler samples a {args.sampler}-distilled student only; --smiles and "
                        "--fix-atoms sample an ordinary model with one of the others.")
    if args.resample < 1:
        raise UserError(f"--resample must be at least 1, got {args.resample}.")
    if args.smiles:
        if args.atoms is not None:
            raise UserError("--smiles fixes the atoms; drop --atoms.")
        if Path(args.out).suffix.lower() != ".sdf":
            raise UserError(f"--out {args.out} must end in .sdf: conformers keep the input's bonds.")
    elif args.atoms is None:
        raise UserError("--fix-atoms needs --atoms N, the total size of the grown molecules.")


def read_fragment(path: str):
    """The first molecule of an SDF/MOL file, hydrogens kept: ``(atomic numbers (k,), positions (k, 3))``."""
    if not Path(path).is_file():
        raise UserError(f"--fix-atoms {path} does not exist.")
    supplier = Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False)
    mol = next(iter(supplier), None) if len(supplier) else None
    if mol is None or mol.GetNumConformers() == 0:
        raise UserError(f"--fix-atoms {path} holds no molecule with coordinates that RDKit can read.")
    others = sorted({a.GetSymbol() for a in mol.GetAtoms() if a.GetSymbol() not in ATOM_TYPES})
    if others:
        raise UserError(f"--fix-atoms {path} contains {', '.join(others)}; the model knows only H, C, N, O and F.")
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    return z, np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64)


def _load_edm_model(args: argparse.Namespace):
    """The ``--ckpt`` model (default: the bundled unconditional one); UserError unless it diffuses atoms."""
    ckpt = Path(args.ckpt) if args.ckpt else bundled_checkpoint("sci_diffusion_molecules", "edm")
    module = load_module(ckpt, domain="molecules").eval()
    if getattr(module, "model_kind", None) != "edm":
        raise UserError(f"Checkpoint {ckpt} holds a {getattr(module, 'model_kind', type(module).__name__)} model; "
                        "--smiles and --fix-atoms need the EDM-style model, which diffuses atoms.")
    return module


def warn_if_larger_than_trained(module, atoms: int, what: str) -> None:
    """A warning on stderr when a molecule has more atoms than any the model was trained on (its
    ``atom_count_histogram``): the conformers are written, but the model never saw a molecule that size."""
    largest = max(getattr(module, "atom_count_histogram", None) or {0: 0})
    if largest and atoms > largest:
        print(f"sci-diffusion: warning: {what} has {atoms} atoms with its hydrogens, {atoms / largest:.1f} times the "
              f"largest molecule the model was trained on ({largest} atoms); its conformers are outside what the model "
              "learned, so check them.", file=sys.stderr)


def run_inpainting_sample(args: argparse.Namespace) -> int:
    """``sample molecules --smiles`` or ``--fix-atoms``: the molecules to ``--out`` and a summary JSON beside it."""
    check_inpainting_arguments(args)
    check_writable(args.out)
    module = _load_edm_model(args)
    gen = torch.Generator().manual_seed(args.seed)
    tags = {"SYNTHETIC": 1, "seed": args.seed, "steps": args.steps, "checkpoint_sha256": module.checkpoint_hash,
            "generator": f"sci-diffusion {sci_diffusion.__version__}"}
    start = time.perf_counter()
    if args.smiles:
        summary = _write_conformers(args, module, gen, tags, start)
    else:
        summary = _write_grown_fragments(args, module, gen, tags, start)
    write_json(Path(args.out).with_suffix(Path(args.out).suffix + ".json"), summary)
    sys.stdout.flush()
    return 0


def _write_conformers(args: argparse.Namespace, module, gen: torch.Generator, tags: dict, start: float) -> dict:
    """``--smiles``: conformers with the input's connectivity to the ``--out`` SDF; returns the run's summary."""
    mol = molecule_from_smiles(args.smiles)
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    warn_if_larger_than_trained(module, len(z), args.smiles)
    conformers = []
    for first in range(0, args.num, args.batch_size):
        count = min(args.batch_size, args.num - first)
        conformers += generate_conformers(module, [mol], count, args.sampler, args.steps, gen, args.precision)[0]
    kept = [(i, p) for i, p in enumerate(conformers) if perceived_bonds(z, p) == graph_bonds(mol)]
    with atomic_path(args.out, suffix=".sdf") as tmp:
        writer = Chem.SDWriter(str(tmp))
        for i, pos in kept:
            record = with_conformer(mol, pos)
            for key, value in {**tags, "sampler": args.sampler, "index": i, "SMILES": args.smiles}.items():
                record.SetProp(str(key), str(value))
            writer.write(record)
        writer.close()
    seconds = time.perf_counter() - start
    summary = {"smiles": args.smiles, "requested": args.num, "written": len(kept),
               "wrong_connectivity": args.num - len(kept), "seconds_per_conformer": seconds / args.num, **tags}
    print(f"wrote {len(kept)} conformers of {args.smiles} to {args.out}; {args.num - len(kept)} of {args.num} did not "
          f"have the input's connectivity (bonds perceived from distances by RDKit) and were left out "
          f"({seconds / args.num:.2f} s per conformer)")
    return summary


def _write_grown_fragments(args: argparse.Namespace, module, gen: torch.Generator, tags: dict, start: float) -> dict:
    """``--fix-atoms``: molecules grown from the fragment to ``--out``; returns the run's summary."""
    z_fragment, pos_fragment = read_fragment(args.fix_atoms)
    if not 1 <= args.atoms <= 100:
        raise UserError(f"--atoms {args.atoms} is out of range; use {len(z_fragment)} to 100 atoms.")
    warn_if_larger_than_trained(module, args.atoms, f"--atoms {args.atoms}")
    task = InpaintingTask.fragment(z_fragment, pos_fragment, args.atoms)
    rmsds = []
    with MoleculeWriter(Path(args.out), chunk_size=args.batch_size, bonds=args.bonds) as writer:
        stream = inpaint_molecules(module, task, args.num, args.steps, args.resample, gen, args.batch_size,
                                   args.precision)
        for i, (z, pos) in enumerate(stream):
            # back to the fragment's own frame: its atoms sit where the file put them, up to rounding
            pos = pos - pos[: len(z_fragment)].mean(axis=0) + pos_fragment.mean(axis=0)
            rmsds.append(fragment_rmsd(pos_fragment, pos))
            writer.write(z, pos, {**tags, "sampler": "repaint", "resample": args.resample, "index": i,
                                  "fragment_atoms": len(z_fragment), "fragment_rmsd_A": f"{rmsds[-1]:.4f}"})
    seconds = time.perf_counter() - start
    summary = {"fragment": str(args.fix_atoms), "fragment_atoms": len(z_fragment), "atoms": args.atoms,
               "written": args.num, "max_fragment_rmsd_A": max(rmsds), "resample": args.resample,
               "seconds_per_molecule": seconds / args.num, **tags}
    print(f"wrote {args.num} molecules of {args.atoms} atoms grown from the {len(z_fragment)}-atom fragment "
          f"{args.fix_atoms} to {args.out}; the fragment moved by at most {max(rmsds):.3f} Å RMSD "
          f"({seconds / args.num:.2f} s per molecule)")
    return summary
