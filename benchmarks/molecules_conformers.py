"""Conformers of given molecules: the diffusion model against RDKit's ETKDG, on QM9 test molecules (issue 14 §2).

For the first ``--molecules`` molecules of the EDM test split whose DFT geometry has the connectivity
of their QM9 SMILES (bonds perceived from distances by RDKit; the others cannot be matched atom by
atom and are counted), every method draws ``--k`` conformers from the SMILES with RDKit's hydrogens:

- **diffusion**: ``sample molecules --smiles`` (``conformers.generate_conformers`` on the bundled EDM
  model, x0 estimates refined towards the graph's distance bounds, ``--sampler`` with ``--steps``);
- **bounds refinement alone**: the same sampler loop without the network (the ablation);
- **conformer model** (with ``--conformer-ckpt``): the same loop on a model trained with the atom types
  given (``configs/molecules/qm9_edm_small_conformer.yaml``) instead of the unconditional one;
- **ETKDG**: RDKit's ``EmbedMultipleConfs`` with ETKDGv3; **ETKDG + MMFF**: then MMFF94 optimisation.

Scores, per method: the heavy-atom RMSD to the DFT geometry of the best of the k conformers
(``rdMolAlign.GetBestRMS``: optimal alignment over symmetry-equivalent atom maps), its median and
quantiles, coverage (the fraction of molecules whose best RMSD is below 0.5 A), the fraction of
conformers whose distance-perceived connectivity is the input's, and seconds per conformer (wall,
``torch`` and RDKit on the same cores).

    python benchmarks/molecules_conformers.py --molecules 200 --k 5
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
COVERAGE_A = 0.5
METHODS = ("diffusion", "bounds refinement alone", "ETKDG", "ETKDG + MMFF")
CONFORMER_METHOD = "diffusion, conformer model (types given)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--molecules", type=int, default=200)
    p.add_argument("--k", type=int, default=5, help="conformers per molecule")
    p.add_argument("--sampler", default="dpmpp2m_sde")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-molecules", type=int, default=20, help="molecules per diffusion batch (x k graphs)")
    p.add_argument("--conformer-ckpt", help="a conformer model (types_given) to score as one more row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-readme", action="store_true")
    return p.parse_args(argv)


def test_molecules(count: int):
    """``(rows, mols, references, skipped)``: QM9 test molecules with their DFT geometry in the SMILES's atom order."""
    from sci_diffusion_molecules.data.qm9 import edm_split, load_qm9
    from sci_diffusion_molecules.generation.conformers import match_connectivity, molecule_from_smiles, with_conformer

    arrays = load_qm9()
    rows, mols, references, skipped = [], [], [], []
    for row in edm_split(arrays)["test"]:
        if len(rows) == count:
            break
        mol = molecule_from_smiles(str(arrays.smiles[row]))
        z, pos = arrays.molecule(int(row))
        order = match_connectivity(mol, z.astype(np.int64), pos)
        if order is None:
            skipped.append(str(arrays.smiles[row]))
            continue
        rows.append(int(row))
        mols.append(mol)
        references.append(with_conformer(mol, np.asarray(pos, dtype=np.float64)[order]))
    return rows, mols, references, skipped


def diffusion_conformers(mols, args, module) -> tuple[list[list[np.ndarray]], float]:
    import torch

    from sci_diffusion_molecules.generation.conformers import generate_conformers

    out, start = [], time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    for first in range(0, len(mols), args.batch_molecules):
        out += generate_conformers(module, mols[first:first + args.batch_molecules], args.k, args.sampler, args.steps,
                                   generator)
    return out, time.perf_counter() - start


def etkdg_conformers(mols, args, mmff: bool) -> tuple[list[list[np.ndarray]], float]:
    from rdkit import Chem
    from rdkit.Chem import AllChem

    out, start = [], time.perf_counter()
    for i, mol in enumerate(mols):
        m = Chem.Mol(mol)
        params = AllChem.ETKDGv3()
        params.randomSeed = args.seed + i
        params.numThreads = args.threads
        ids = list(AllChem.EmbedMultipleConfs(m, args.k, params))
        if mmff and ids:
            AllChem.MMFFOptimizeMoleculeConfs(m, numThreads=args.threads)
        out.append([np.asarray(m.GetConformer(c).GetPositions()) for c in ids])
    return out, time.perf_counter() - start


def score(mols, references, conformers) -> dict:
    from rdkit import Chem
    from rdkit.Chem import rdMolAlign

    from sci_diffusion_molecules.generation.conformers import graph_bonds, perceived_bonds, with_conformer

    best, right, total = [], 0, 0
    for mol, ref, confs in zip(mols, references, conformers):
        z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
        heavy_ref = Chem.RemoveHs(ref)
        rmsds = [rdMolAlign.GetBestRMS(Chem.RemoveHs(with_conformer(mol, p)), heavy_ref) for p in confs]
        best.append(min(rmsds) if rmsds else float("inf"))
        right += sum(perceived_bonds(z, p) == graph_bonds(mol) for p in confs)
        total += len(confs)
    best = np.asarray(best)
    finite = best[np.isfinite(best)]
    return {"best_rmsd_median_A": float(np.median(best)),
            "best_rmsd_quantiles_A": {str(q): float(np.quantile(finite, q / 100)) for q in (10, 25, 50, 75, 90)},
            "best_rmsd_mean_A": float(finite.mean()), "coverage_0.5A": float((best < COVERAGE_A).mean()),
            "coverage_1.0A": float((best < 1.0).mean()), "right_connectivity": right / max(total, 1),
            "conformers": total, "molecules_without_conformer": int((~np.isfinite(best)).sum()),
            "best_rmsd_A": [round(float(v), 4) for v in best]}


def markdown(rows: list[dict], args: argparse.Namespace, n: int) -> str:
    lines = [f"| method ({n} QM9 test molecules, best of k = {args.k}) | median RMSD (Å) | 25-75 % (Å) | coverage < 0.5 Å "
             "| right connectivity | s / conformer |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        q = r["best_rmsd_quantiles_A"]
        lines.append(f"| {r['method']} | {r['best_rmsd_median_A']:.3f} | {q['25']:.2f}-{q['75']:.2f} | "
                     f"{100 * r['coverage_0.5A']:.1f} % | {100 * r['right_connectivity']:.1f} % | "
                     f"{r['seconds_per_conformer']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from reporting import write_result

    from sci_diffusion.checkpoints import bundled_checkpoint, load_module

    torch.set_num_threads(args.threads)
    rows_qm9, mols, references, skipped = test_molecules(args.molecules)
    print(f"{len(mols)} test molecules ({len(skipped)} skipped: their DFT geometry's perceived connectivity "
          "differs from their SMILES)", flush=True)
    ckpt = bundled_checkpoint("sci_diffusion_molecules", "edm")
    module = load_module(ckpt, domain="molecules").eval()
    results = []
    methods = list(METHODS)
    conformer_module = None
    if args.conformer_ckpt:
        conformer_module = load_module(args.conformer_ckpt, domain="molecules").eval()
        methods.insert(1, CONFORMER_METHOD)
    for method in methods:
        if method == "diffusion":
            confs, seconds = diffusion_conformers(mols, args, module)
        elif method == CONFORMER_METHOD:
            confs, seconds = diffusion_conformers(mols, args, conformer_module)
        elif method == "bounds refinement alone":
            confs, seconds = diffusion_conformers(mols, args, None)
        else:
            confs, seconds = etkdg_conformers(mols, args, mmff=method.endswith("MMFF"))
        row = {"method": method, **score(mols, references, confs),
               "seconds_per_conformer": seconds / max(sum(len(c) for c in confs), 1), "seconds": seconds}
        results.append(row)
        print(f"  {method}: median best RMSD {row['best_rmsd_median_A']:.3f} A, coverage {row['coverage_0.5A']:.3f}, "
              f"right connectivity {row['right_connectivity']:.3f}, {row['seconds_per_conformer']:.3f} s/conformer",
              flush=True)
    payload = {"molecules": len(mols), "qm9_rows": rows_qm9, "skipped_smiles": skipped, "k": args.k,
               "sampler": args.sampler, "steps": args.steps, "threads": args.threads, "checkpoint": str(ckpt),
               "checkpoint_sha256": module.checkpoint_hash, "rows": results,
               "conformer_checkpoint": args.conformer_ckpt,
               "conformer_checkpoint_sha256": None if conformer_module is None else conformer_module.checkpoint_hash}
    write_result("molecules_conformers", payload, markdown(results, args, len(mols)), update_page=not args.no_readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
