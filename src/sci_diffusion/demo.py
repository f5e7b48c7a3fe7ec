"""``sci-diffusion demo``: every sampler on the analytic Gaussian mixture, fed the exact denoiser.

It needs no network and no checkpoint, so it shows sampler accuracy against step count on its
own; ``benchmarks/samplers_gmm.py`` uses the same :func:`compare_samplers`.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .atomic import atomic_path, write_json
from .errors import UserError
from .gaussian_mixture import GaussianMixture, sliced_wasserstein
from .samplers import SAMPLERS, function_evaluations, get_sampler, sampler_times
from .schedules import NoiseSchedule
from .state_spaces import EuclideanSpace

DISTANCE_NAME = "sliced 2-Wasserstein distance to exact mixture samples (256 projections)"


def compare_samplers(samplers: list[str], steps_list: list[int], num: int = 20000, schedule: str = "polynomial_2",
                     seed: int = 0, keep_samples: bool = False) -> tuple[list[dict], dict]:
    """Run each sampler at each step count on the default 2-D mixture with its exact denoiser.

    Returns ``rows`` (sampler, steps, nfe, distance, seconds) and, if ``keep_samples``, the
    samples ``{(sampler, steps): (num, 2) tensor}``. The reference floor is in the row with
    sampler ``"exact"``: the distance between two independent exact draws of size ``num``.
    """
    gmm = GaussianMixture.default_2d()
    sched = NoiseSchedule.from_name(schedule, 1000)
    space = EuclideanSpace()
    reference = gmm.sample(num, torch.Generator().manual_seed(seed + 1))
    rows = [{"sampler": "exact", "steps": 0, "nfe": 0,
             "distance": sliced_wasserstein(gmm.sample(num, torch.Generator().manual_seed(seed + 2)), reference),
             "seconds": 0.0}]
    kept = {}
    for name in samplers:
        for steps in steps_list:
            gen = torch.Generator().manual_seed(seed)
            x_T = space.noise(torch.zeros(num, 2, dtype=torch.float64), gen)
            times = sampler_times(name, sched, steps)
            start = time.perf_counter()
            x = get_sampler(name)(gmm.exact_denoiser(sched), x_T, sched, times, space, generator=gen)
            seconds = time.perf_counter() - start
            rows.append({"sampler": name, "steps": steps, "nfe": function_evaluations(name, steps),
                         "distance": sliced_wasserstein(x, reference), "seconds": round(seconds, 4)})
            if keep_samples:
                kept[(name, steps)] = x
    return rows, kept


def plot_samples(kept: dict, out_png: Path) -> None:
    """A grid of scatter plots, one per (sampler, steps)."""
    import matplotlib  # only when a picture is drawn: matplotlib takes about a second to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({k[0] for k in kept}, key=list(SAMPLERS).index)
    steps = sorted({k[1] for k in kept})
    fig, axes = plt.subplots(len(names), len(steps), figsize=(2.2 * len(steps), 2.2 * len(names)), squeeze=False)
    for i, n in enumerate(names):
        for j, s in enumerate(steps):
            ax = axes[i][j]
            x = kept[(n, s)][:3000]
            ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
            ax.set_xlim(-3.5, 3.5)
            ax.set_ylim(-3.5, 3)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{n} {s}", fontsize=8)
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def run_demo(args: argparse.Namespace) -> int:
    try:
        samplers = [s for s in args.samplers.split(",") if s]
        for s in samplers:
            get_sampler(s)
        steps = [int(s) for s in args.steps.split(",") if s]
    except ValueError as exc:
        raise UserError(str(exc).rstrip(".") + ".") from None
    if args.num < 2 or any(s < 1 for s in steps):
        raise UserError("--num must be at least 2 and every --steps value at least 1.")
    rows, kept = compare_samplers(samplers, steps, args.num, args.schedule, args.seed, keep_samples=True)
    out = Path(args.out)
    write_json(out / "demo.json", {"metric": DISTANCE_NAME, "schedule": args.schedule, "num": args.num, "rows": rows})
    plot_samples(kept, out / "demo.png")
    print(f"{'sampler':8s} {'steps':>5s} {'NFE':>5s} {'distance':>9s}")
    for r in rows:
        print(f"{r['sampler']:8s} {r['steps']:5d} {r['nfe']:5d} {r['distance']:9.4f}")
    print(f"wrote {out / 'demo.json'} and {out / 'demo.png'}")
    return 0
