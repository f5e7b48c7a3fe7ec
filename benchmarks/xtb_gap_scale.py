"""Fit the line that maps GFN2-xTB HOMO-LUMO gaps onto QM9's DFT gaps, and check it on other molecules (issue 29 §3).

    python benchmarks/xtb_gap_scale.py [--fit 1000] [--check 1000]

Fits ``dft ~ slope * xtb + intercept`` by least squares on the first ``--fit`` molecules of Da (the conditional
protocol's classifier half, in EDM's order: never a generator's targets) and checks it on the first ``--check``
molecules of the EDM test split: Pearson r and the mapped gap's MAE there. Writes the line to
``domains/molecules/checkpoints/xtb_gap_scale.json`` (what ``evaluation/xtb_gap.read_gap_scale`` reads), and
``benchmarks/results/xtb_gap_scale.json`` with its table in docs/results/xtb_gap_scale.md. One thread for tblite; a
molecule without a gap (none in real QM9 so far) is counted and left out.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from reporting import write_result

from sci_diffusion_molecules.data.qm9 import PROPERTY_NAMES, conditional_halves, edm_split, load_qm9
from sci_diffusion_molecules.evaluation.xtb_gap import (
    SCALE_PATH,
    GapScale,
    check_gap_scale,
    fit_gap_scale,
    xtb_gap_ev,
)

GAP = PROPERTY_NAMES.index("gap")


def gaps(arrays, rows) -> tuple[np.ndarray, np.ndarray, int]:
    """``(xtb, dft, missing)``: the paired gaps (eV) of the rows that have an xTB gap, and how many did not."""
    xtb, dft = [], []
    for row in rows:
        z, pos = arrays.molecule(int(row))
        gap = xtb_gap_ev(z, pos)
        if gap is not None:
            xtb.append(gap)
            dft.append(float(arrays.properties[int(row), GAP]))
    return np.array(xtb), np.array(dft), len(rows) - len(xtb)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fit", type=int, default=1000, help="molecules of Da the line is fitted on")
    p.add_argument("--check", type=int, default=1000, help="molecules of the test split it is checked on")
    p.add_argument("--no-readme", action="store_true")
    args = p.parse_args()
    if args.fit < 2 or args.check < 2:
        p.error("--fit and --check need at least 2 molecules each.")

    arrays = load_qm9()
    split = edm_split(arrays)
    fit_rows, check_rows = conditional_halves(split["train"])["Da"][: args.fit], split["test"][: args.check]
    start = time.process_time()
    xtb_fit, dft_fit, missing_fit = gaps(arrays, fit_rows)
    xtb_check, dft_check, missing_check = gaps(arrays, check_rows)
    cpu = time.process_time() - start
    slope, intercept = fit_gap_scale(xtb_fit, dft_fit)
    r, mae = check_gap_scale(slope, intercept, xtb_check, dft_check)
    r_fit, mae_fit = check_gap_scale(slope, intercept, xtb_fit, dft_fit)
    raw_mae = float(np.abs(xtb_check - dft_check).mean())
    scale = GapScale(slope, intercept, r, mae, len(xtb_fit), len(xtb_check),
                     provenance=f"python benchmarks/xtb_gap_scale.py --fit {args.fit} --check {args.check}: fitted on "
                                f"the first {args.fit} molecules of Da, checked on the first {args.check} of the EDM "
                                f"test split, GFN2-xTB single points by tblite at the QM9 (DFT) geometries")
    scale.save(SCALE_PATH)
    markdown = "\n".join([
        f"GFN2-xTB HOMO-LUMO gap against QM9's DFT gap (B3LYP), at the QM9 geometries. Line fitted on {len(xtb_fit):,} "
        f"molecules of Da, checked on {len(xtb_check):,} of the test split ({missing_fit + missing_check} without an "
        f"xTB gap); {cpu / (len(fit_rows) + len(check_rows)):.3f} CPU-s per molecule, one thread.", "",
        "| | slope | intercept (eV) | r | MAE (eV) |", "|---|---|---|---|---|",
        f"| raw xTB gap (no mapping), check molecules | 1 | 0 | {r:.3f} | {raw_mae:.3f} |",
        f"| mapped, fit molecules (in sample) | {slope:.4f} | {intercept:.4f} | {r_fit:.3f} | {mae_fit:.3f} |",
        f"| mapped, check molecules (held out) | {slope:.4f} | {intercept:.4f} | {r:.3f} | {mae:.3f} |",
        "", f"The line ships as `{SCALE_PATH.relative_to(SCALE_PATH.parents[3])}`; the check molecules' MAE is what a "
            "mapped xTB gap is worth against DFT on real molecules."])
    print(markdown)
    write_result("xtb_gap_scale", {"slope": slope, "intercept": intercept, "r_check": r, "mae_check_ev": mae,
                                   "r_fit": r_fit, "mae_fit_ev": mae_fit, "raw_mae_check_ev": raw_mae,
                                   "fit_molecules": len(xtb_fit), "check_molecules": len(xtb_check),
                                   "without_gap": missing_fit + missing_check, "cpu_seconds": round(cpu, 1)},
                 markdown, update_page=not args.no_readme)


if __name__ == "__main__":
    main()
