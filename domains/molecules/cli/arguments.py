"""The flags of ``sample molecules`` and ``evaluate molecules`` (argparse tables only).

``domain.py`` imports this module to build ``sci-diffusion --help``, so it imports nothing heavy: the
verbs themselves are ``sample.py`` (with ``sample_checks.py`` and ``inpainting.py``) and ``evaluate.py``.
"""
from __future__ import annotations

import argparse
import os

from sci_diffusion.names import DISTILLED_SAMPLER_NAMES, SAMPLER_NAMES, SPACINGS

CONDITION_SOURCES = ("db",)
MODEL_CHOICES = ("edm", "latent", "bonds")  # the bundled unconditional models, by MoleculeDiffusion.model_kind
PRECISION_CHOICES = ("auto", "bf16", "fp32")  # sci_diffusion.precision.PRECISION_CHOICES, named here without importing torch


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", help="a molecules checkpoint of either model (default: the bundled QM9 model that "
                                  "--model names; with a condition on the gap, the bundled gap-conditioned model)")
    p.add_argument("--model", choices=MODEL_CHOICES,
                   help="which bundled model samples: bonds (default; generates bond orders with the atoms, MiDi / "
                        "EQGAT-diff style, the most stable by EDM's metric, see the README), edm (EDM-style, diffuses "
                        "the atoms; the one for --trajectory and the ODE samplers) or latent (GeoLDM-style, "
                        "diffuses an autoencoder's latents); with --ckpt, the kind the checkpoint must hold")
    p.add_argument("--num", type=int, default=100, help="molecules to draw")
    p.add_argument("--sampler", default="dpmpp2m_sde", choices=SAMPLER_NAMES + DISTILLED_SAMPLER_NAMES,
                   help="dpmpp2m_sde (default): stochastic DPM-Solver++ on a quadratic time grid; at 50 steps "
                        "as many stable molecules as ancestral ddpm at 1000, far more than the ODE form dpmpp2m "
                        "(see the benchmark); consistency: a consistency-distilled student's, at its own --steps")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (independent of the training T)")
    p.add_argument("--spacing", choices=SPACINGS, help="the sampler's time grid: uniform, quadratic, cubic or "
                                                        "logsnr (default: the sampler's own; dpmpp2m_sde: quadratic; at "
                                                        "8 steps or fewer cubic keeps more molecules stable)")
    p.add_argument("--restarts", type=int, default=0, metavar="K",
                   help="restart sampling from the end (Xu et al. 2023): carry each finished molecule forward to "
                        "--restart-time and sample it back, K times; on the bundled default K = 4 from 0.15 lowers "
                        "the median GFN2-xTB relaxation energy of its molecules from 8.1 to 4.8 kcal/mol (README), at "
                        "--restart-steps network passes more per restart (default 0: none)")
    p.add_argument("--restart-time", type=float, default=0.15, metavar="T",
                   help="the diffusion time in (1/T, 1] each restart carries a molecule forward to (default 0.15)")
    p.add_argument("--restart-steps", type=int, default=10, metavar="N",
                   help="sampler steps of each restart's way back (default 10)")
    p.add_argument("--polish", type=int, default=0, metavar="N",
                   help="after sampling (and any restarts), apply the denoiser N times to the coordinates at "
                        "--polish-time, so that each molecule climbs to a mode of the learned density "
                        "(sci_diffusion.polish); N network passes more (default 0: none)")
    p.add_argument("--polish-time", type=float, default=0.02, metavar="T",
                   help="the diffusion time in (0, 1) of the polishing iterations (default 0.02)")
    p.add_argument("--expert", metavar="CKPT",
                   help="a low-noise expert of the model (a bond-aware model trained on late times only, "
                        "configs/molecules/recipes/expert_low_noise.yaml) that answers every network call at "
                        "t <= --expert-below: the run's last steps, its restarts and its polishing; 'bundled': the "
                        "bundled default's (qm9_bonds_x0_expert.ckpt)")
    p.add_argument("--expert-below", type=float, metavar="T",
                   help="the time in (0, 1) at and under which --expert answers (default: the latest time it was "
                        "trained on, its loss_max_time)")
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
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                   help="network arithmetic: bf16 (bfloat16 autocast), fp32, or auto (default): bf16 where the CPU "
                        "has AVX512-BF16 or AMX, where it is the faster, fp32 elsewhere (sci_diffusion.precision); the "
                        "summary records which ran")
    p.add_argument("--compile", action="store_true",
                   help="run the network through torch.compile (needs a C++ compiler): compiled for the first batch and "
                        "once more for the next batch size (each seconds to a minute), then more molecules per second "
                        "on a CPU: 1.1x for the EDM gap model, 1.3x for the bond-aware default (README)")
    p.add_argument("--shard", metavar="K/N",
                   help="write only part K (0 to N-1) of N equal parts of the --num molecules: exactly the molecules, "
                        "with their indices, that one run of --num writes there (sizes, targets and each molecule's "
                        "seed come from --seed whatever the shard), so N array jobs or ranks together write that run; "
                        "evaluate molecules --samples takes all the parts (README: SLURM and torchrun)")
    p.add_argument("--bonds", default="edm", choices=("edm", "rdkit"), help="bond rule for the SDF bond block")
    p.add_argument("--novelty", action=argparse.BooleanOptionalAction, default=True,
                   help="flag each candidate as novel or not against the QM9 training SMILES")
    p.add_argument("--out", required=True, help="output .sdf or .xyz (written in chunks, renamed when complete); "
                                                "the candidates table goes beside it as .csv")
    p.add_argument("--png", help="optional PNG grid of 2-D depictions of the first 16 molecules")
    p.add_argument("--report", metavar="PAGE.html", help="also write one self-contained HTML page (sci-diffusion report): "
                                                        "the candidates, sortable, in 2-D and 3-D, the metrics beside the "
                                                        "published rows; opens offline")
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
    physics = p.add_argument_group("xTB", "GFN2-xTB's view of every candidate (pip install 'sci-diffusion[xtb]'); "
                                          "about 0.6 CPU-s a molecule")
    physics.add_argument("--xtb", action="store_true",
                         help="the candidates table gains xtb_gap [eV] (GFN2-xTB HOMO-LUMO gap at the written geometry, "
                              "mapped onto QM9's DFT scale: held-out MAE 0.47 eV), xtb_gap_relaxed [eV] (the same after "
                              "relaxing the molecule with GFN2-xTB) and relaxation [kcal/mol] (the energy it gives up); "
                              "empty for a molecule xTB cannot score")
    physics.add_argument("--oversample", type=int, default=1, metavar="F",
                         help="with --xtb and a gap target: draw F times --num molecules and keep the --num whose "
                              "relaxed xTB gap lies closest to their target (among those passing --filter) in --out; "
                              "every drawn molecule goes to <out>.drawn.sdf (or .xyz), the table marks the kept ones "
                              "(kept_by_xtb)")
    physics.add_argument("--xtb-screen", type=float, default=2.0, metavar="S",
                         help="with --oversample: relax only the S x --num eligible molecules whose xTB gap at the "
                              "written geometry lies closest to their target (the relaxation costs about 30 times the "
                              "written gap); the others keep an empty relaxed gap and relaxed 0. 0 relaxes all "
                              "(default 2)")
    physics.add_argument("--xtb-workers", type=int, default=available_cores(), metavar="N",
                         help="processes that relax molecules side by side, one thread each (default: the cores "
                              "this process may use)")
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


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", required=True, nargs="+",
                   help="an .sdf or .xyz file (any tool's output; SDF bonds are ignored), or the parts of one run "
                        "(sample molecules --shard), scored together")
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
    p.add_argument("--xtb", action="store_true",
                   help="add the geometry check: relax each molecule with GFN2-xTB and report the median and 90th "
                        "percentile of the energy drop (kcal/mol) and the unscorable fraction; about 0.2-0.6 CPU-s a "
                        "molecule; needs pip install 'sci-diffusion[xtb]'")
    p.add_argument("--xtb-max", type=int, metavar="N", help="with --xtb, relax only the file's first N molecules")
    p.add_argument("--report", metavar="PAGE.html", help="also write one self-contained HTML page (sci-diffusion report): "
                                                        "these metrics beside the published rows, the molecules in 2-D "
                                                        "and 3-D; opens offline")
