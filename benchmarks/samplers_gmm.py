"""Sampler accuracy against step count on the analytic 2-D Gaussian mixture (exact denoiser).

    python benchmarks/samplers_gmm.py [--num 20000] [--schedule polynomial_2]

Writes benchmarks/results/samplers_gmm.json and the table in docs/results/samplers_gmm.md. No network is trained: the
distance measures the samplers alone.
"""
from __future__ import annotations

import argparse

from reporting import write_result

from sci_diffusion.demo import DISTANCE_NAME, compare_samplers
from sci_diffusion.samplers import SAMPLERS

STEPS = [5, 10, 20, 50, 100, 1000]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=20000)
    p.add_argument("--schedule", default="polynomial_2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-readme", action="store_true", help="do not touch docs/results/samplers_gmm.md")
    args = p.parse_args()
    rows, _ = compare_samplers(list(SAMPLERS), STEPS, args.num, args.schedule, args.seed)
    floor = rows[0]["distance"]
    table = {(r["sampler"], r["steps"]): r for r in rows[1:]}
    lines = [f"Sliced W2 to exact samples ({args.num:,} points, `{args.schedule}`, T = 1000; "
             f"two exact draws differ by {floor:.3f}). Seconds in brackets.", "",
             "| sampler | " + " | ".join(f"{s} steps" for s in STEPS) + " |",
             "|---|" + "---|" * len(STEPS)]
    for name in SAMPLERS:
        cells = [f"{table[(name, s)]['distance']:.3f} ({table[(name, s)]['seconds']:.1f})" for s in STEPS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    markdown = "\n".join(lines)
    print(markdown)
    write_result("samplers_gmm", {"metric": DISTANCE_NAME, "schedule": args.schedule, "num": args.num,
                                  "exact_floor": floor, "rows": rows[1:]}, markdown, update_page=not args.no_readme)


if __name__ == "__main__":
    main()
