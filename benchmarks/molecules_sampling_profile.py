"""Where the time of ``sample molecules`` goes (issue 32 §2: network, bond inference, RDKit, writing).

Each setting runs the CLI as a user runs it (``sci-diffusion sample molecules --num N --steps S``, the bundled
default or ``--ckpt``, its defaults otherwise: ``--precision auto``, batches of 100, the candidates table and the
SDF written as they come), in this process, with a wall clock around the functions each stage is made of:

- ``network``: every forward pass of the model's network (``BondEGNN.forward``, or the EGNN of an atoms-only
  model);
- ``sampler and decoding``: the rest of drawing: the sampler's arithmetic, noise, the categorical steps, turning
  the state into atoms and bond classes (the CLI's sampling loop minus the other stages);
- ``bonds and RDKit``: ``chem.stability.molecule_report``, the EDM metric's bonds from distances, atom stability
  and the RDKit molecule, sanitised, with its SMILES (the candidates table's ``stable``, ``valid``, ``smiles``);
- ``descriptors``: QED, SA score and ring counts of that SMILES (``evaluation.triage.descriptors``);
- ``writing``: the SDF record of each molecule (``chem.files.MoleculeWriter.write``);
- ``outside the loop``: loading the model, the summary, the CSV (the command's wall time minus its loop).

Every step count runs as the CLI runs by default and with ``--compile`` (``--modes``). An untimed run of
``--warmup`` molecules at 2 steps comes first in each mode, in the same process, so that the kernels (and
compiled graphs) the first passes build are not charged to the first setting. Molecules per second are the CLI's own (its summary:
``--num`` over the sampling loop's seconds), on ``torch.get_num_threads()`` threads; run on otherwise idle cores,
since the stages are wall-clock.

    python benchmarks/molecules_sampling_profile.py --steps 8 20 50 --num 1000
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from sci_diffusion.cli import main as cli_main
from sci_diffusion_molecules.chem import files
from sci_diffusion_molecules.evaluation import candidates
from sci_diffusion_molecules.models import bond_egnn, egnn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import write_result  # noqa: E402

STAGES = ("network", "sampler and decoding", "bonds and RDKit", "descriptors", "writing")


class StageClock:
    """Wall seconds and calls per stage, accumulated by :meth:`timing` around a function of a class or module."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextmanager
    def timing(self, owner: object, attribute: str, stage: str) -> Iterator[None]:
        """Replace ``owner.attribute`` (a function) by a timed copy for the block; the original comes back after."""
        original: Callable = getattr(owner, attribute)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start
                self.calls[stage] += 1

        setattr(owner, attribute, timed)
        try:
            yield
        finally:
            setattr(owner, attribute, original)


def timed_stages(clock: StageClock) -> ExitStack:
    """The clock around every stage's functions (``STAGES`` but the sampler's remainder), as one context."""
    stack = ExitStack()
    stack.enter_context(clock.timing(bond_egnn.BondEGNN, "forward", "network"))
    stack.enter_context(clock.timing(egnn.EGNN, "forward", "network"))
    stack.enter_context(clock.timing(candidates, "molecule_report", "bonds and RDKit"))
    stack.enter_context(clock.timing(candidates, "descriptors", "descriptors"))
    stack.enter_context(clock.timing(files.MoleculeWriter, "write", "writing"))
    return stack


def profile_setting(num: int, steps: int, sampler: str | None, ckpt: str | None, out_dir: Path,
                    compiled: bool = False) -> dict:
    """One ``sample molecules`` run of ``num`` molecules at ``steps`` steps (with ``--compile`` if ``compiled``),
    its stages timed; returns its row."""
    out = out_dir / f"profile_{steps}{'_compiled' if compiled else ''}.sdf"
    argv = ["sample", "molecules", "--num", str(num), "--steps", str(steps), "--out", str(out), "--no-progress"]
    argv += (["--sampler", sampler] if sampler else []) + (["--ckpt", ckpt] if ckpt else [])
    argv += ["--compile"] if compiled else []
    clock = StageClock()
    start, cpu_start = time.perf_counter(), time.process_time()
    with timed_stages(clock):
        status = cli_main(argv)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if status != 0:
        raise SystemExit(f"sample molecules exited with {status}: {' '.join(argv)}")
    summary = json.loads(out.with_suffix(".sdf.json").read_text())
    loop = summary["seconds"]
    timed = sum(clock.seconds[s] for s in STAGES if s != "sampler and decoding")
    seconds = {**{s: clock.seconds[s] for s in STAGES}, "sampler and decoding": loop - timed,
               "outside the loop": wall - loop}
    return {"steps": steps, "sampler": summary.get("sampler"), "precision": summary.get("precision"),
            "compiled": compiled,
            "molecules": num, "molecules_per_second": summary["molecules_per_second"],
            "network_only_molecules_per_second": round(num / clock.seconds["network"], 2),
            "network_passes": clock.calls["network"], "stable_fraction": summary["stable_fraction"],
            "valid_fraction": summary["valid_fraction"], "loop_seconds": round(loop, 3),
            "command_seconds": round(wall, 3), "command_cpu_seconds": round(cpu, 3),
            "threads": torch.get_num_threads(), "checkpoint": summary.get("checkpoint"),
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "ms_per_molecule": {k: round(1000 * v / num, 3) for k, v in seconds.items()}}


def render(rows: list[dict]) -> str:
    """The results table: molecules per second and each stage's milliseconds per molecule (its share of the loop)."""
    stages = [*STAGES, "outside the loop"]
    head = ("| steps | sampler | network | molecules | mol/s | network alone: mol/s | stable % | "
            + " | ".join(f"{s}: ms (%)" for s in stages) + " |")
    lines = [head, "|" + "---|" * (7 + len(stages))]
    for r in rows:
        cells = [f"{r['ms_per_molecule'][s]:.2f} ({100 * r['seconds'][s] / r['loop_seconds']:.0f})" for s in STAGES]
        cells.append(f"{r['ms_per_molecule']['outside the loop']:.2f}")
        network = f"{r['precision']}{', compiled' if r['compiled'] else ''}"
        lines.append(f"| {r['steps']} | {r['sampler']} | {network} | {r['molecules']:,} | "
                     f"{r['molecules_per_second']:.1f} | {r['network_only_molecules_per_second']:.1f} | "
                     f"{100 * r['stable_fraction']:.1f} | " + " | ".join(cells) + " |")
    return ("\n".join(lines) + "\n\nms: wall milliseconds per molecule; (%): share of the CLI's sampling loop, whose "
            "molecules per second the mol/s column is; `outside the loop`: loading, summary and CSV, not in mol/s.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[8, 20, 50], help="sampler steps, one run each")
    p.add_argument("--num", type=int, default=1000, help="molecules per run")
    p.add_argument("--sampler", help="the CLI's --sampler (default: the CLI's, dpmpp2m_sde)")
    p.add_argument("--ckpt", help="the CLI's --ckpt (default: the bundled default model)")
    p.add_argument("--modes", nargs="+", choices=("eager", "compiled"), default=["eager", "compiled"],
                   help="run every step count as the CLI runs by default and/or with --compile")
    p.add_argument("--warmup", type=int, default=100, help="molecules of an untimed 2-step run first (0: none)")
    p.add_argument("--result-name", default="molecules_sampling_profile")
    p.add_argument("--no-readme", action="store_true", help="write the JSON only, not the page's table")
    args = p.parse_args(argv)
    if args.num < 1 or min(args.steps) < 1 or args.warmup < 0:
        p.error("--num and every --steps must be at least 1, --warmup at least 0.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for compiled in [mode == "compiled" for mode in args.modes]:
            if args.warmup:  # the first passes build kernels (and graphs): not what a long run pays per molecule
                profile_setting(args.warmup, 2, args.sampler, args.ckpt, Path(tmp), compiled)
            for steps in args.steps:
                rows.append(profile_setting(args.num, steps, args.sampler, args.ckpt, Path(tmp), compiled))
                print({k: v for k, v in rows[-1].items() if k != "seconds"}, flush=True)
    markdown = render(rows)
    print(markdown)
    write_result(args.result_name, {"num": args.num, "rows": rows}, markdown, update_page=not args.no_readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
