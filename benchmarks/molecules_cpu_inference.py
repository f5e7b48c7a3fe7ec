"""CPU inference backends for the bundled molecule model (issue 32 §3): which one to adopt.

Each backend runs the bond-aware default network (``BondEGNN``; a distilled student has the same network, so the
same cost per pass):

- ``eager fp32`` and ``eager bf16`` (bfloat16 autocast): PyTorch as ``sample molecules --precision`` runs it;
- ``compiled`` and ``compiled bf16``: ``torch.compile`` (Inductor's C++ backend; ``sample molecules --compile``),
  in float32 and under bfloat16 autocast;
- ``onnxruntime``: the network exported with ``torch.onnx.export(dynamo=True)`` and run by ONNX Runtime's CPU
  provider (all graph optimisations); the graph's index tensors (edges, pairs) are computed outside the exported
  graph, as the sampler computes them once per batch;
- ``int8 dynamic``: ``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear`` (int8 weights, activations
  quantised per call).

Speed: the CPU time of one network pass on a fixed batch of ``--batch-size`` molecules (sizes from the model's
training histogram, seed 0), on ``--threads`` threads, median of ``--repeats``. CPU time rather than wall time,
so that a shared machine does not bias the comparison (the ratio between backends is what decides).

Quality: ``--num`` molecules drawn through each backend with the same sizes and per-molecule seeds
(dpmpp2m_sde, 50 steps), scored by the EDM metric; the difference in molecule stability to eager fp32 with a
95 % bootstrap interval over molecules. A backend is adopted when it is faster and its stability lies within
1 point of eager fp32.

    python benchmarks/molecules_cpu_inference.py --num 1000 --budget-minutes 90
    python benchmarks/molecules_cpu_inference.py --from-json benchmarks/results/molecules_cpu_inference.json

``--from-json`` measures nothing: it rewrites a saved run's page block and README row from the run's own rows,
with the settings (batch size, threads, repeats, molecules) of its recorded command.
"""
from __future__ import annotations

import argparse
import copy
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from sci_diffusion.checkpoints import load_module
from sci_diffusion.compilation import compiled_forward, compiler_missing
from sci_diffusion_molecules.chem.stability import stable_atoms
from sci_diffusion_molecules.data.bond_state import upper_pairs
from sci_diffusion_molecules.data.qm9 import train_smiles
from sci_diffusion_molecules.data.qm9_bonds import train_bond_smiles
from sci_diffusion_molecules.evaluation.metrics import evaluate_generated
from sci_diffusion_molecules.generation.bond_sampling import draw_molecules
from sci_diffusion_molecules.generation.sampling import draw_atom_counts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import PROVENANCE, ROOT, replace_readme_row, write_result  # noqa: E402

DEFAULT_CKPT = ROOT / "domains" / "molecules" / "checkpoints" / "qm9_bonds_x0.ckpt"
BACKENDS = ("eager fp32", "eager bf16", "compiled", "compiled bf16", "onnxruntime", "int8 dynamic")
BF16 = ("eager bf16", "compiled bf16")  # the backends that run under bfloat16 autocast
COMPILED = ("compiled", "compiled bf16")
ONNX_FILE = "bond_egnn.onnx"
STABILITY_TOLERANCE = 0.01  # issue 32: adopt at equal quality, stability within 1 point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default=str(DEFAULT_CKPT), help="a bond-aware molecule checkpoint")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated, from: " + ", ".join(BACKENDS))
    p.add_argument("--batch-size", type=int, default=100, help="molecules per network pass (the CLI's default)")
    p.add_argument("--threads", type=int, default=1, help="threads of every backend while timing")
    p.add_argument("--repeats", type=int, default=7, help="timed passes per backend (after 2 warm-up passes)")
    p.add_argument("--num", type=int, default=1000, help="molecules drawn per backend for the quality check")
    p.add_argument("--sampling-threads", type=int, default=2)
    p.add_argument("--budget-minutes", type=float, help="no quality run starts after this (required to measure)")
    p.add_argument("--no-readme", action="store_true")
    p.add_argument("--from-json", metavar="RESULT_JSON", help="measure nothing: re-render a saved run's page block "
                   "and README row from its own rows, with the settings of its recorded command")
    args = p.parse_args(argv)
    if args.budget_minutes is None and not args.from_json:
        p.error("--budget-minutes is required to measure (or give --from-json to re-render a saved run)")
    args.backends = [b.strip() for b in args.backends.split(",")]
    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown:
        p.error(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    if not args.from_json and not Path(args.ckpt).is_file():
        p.error(f"The checkpoint {args.ckpt} is not there.")
    return args


class IndexedBondNetwork(nn.Module):
    """``BondEGNN.forward_on_graph`` as a module whose inputs are all tensors, so that it exports with dynamic sizes.

    Inputs: ``x_t`` ``(N + P, W)`` the stacked state, ``t`` ``(G,)``, ``batch`` ``(N,)`` and the batch's
    ``BondEGNN.graph_indices``: ``edges`` ``(2, E)``, ``edge_pairs`` ``(E,)``, ``pairs`` ``(2, P)``, ``counts``
    ``(G,)``; output as ``BondEGNN.forward``. Unconditional networks only (the bundled default).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        if net.egnn.cond_dim:
            raise ValueError("IndexedBondNetwork exports unconditional networks only.")
        self.net = net

    def forward(self, x_t: Tensor, t: Tensor, batch: Tensor, edges: Tensor, edge_pairs: Tensor, pairs: Tensor,
                counts: Tensor) -> Tensor:
        return self.net.forward_on_graph(x_t, t, None, batch, edges, edge_pairs, pairs, counts)


def indexed_inputs(net: nn.Module, x_t: Tensor, t: Tensor, batch: Tensor, num_graphs: int) -> tuple[Tensor, ...]:
    """The inputs of :class:`IndexedBondNetwork` for a ``BondEGNN`` call ``(x_t, t, None, batch, num_graphs)``."""
    t = (t.expand(num_graphs) if t.dim() == 0 else t).to(x_t.dtype)
    return x_t, t, batch, *net.graph_indices(batch, num_graphs)


class OnnxRuntimeNetwork(nn.Module):
    """A ``BondEGNN`` stand-in that runs an exported :class:`IndexedBondNetwork` in ONNX Runtime.

    It keeps the PyTorch network it was exported from as a submodule (never called), so that the module's
    parameters, and with them its device, are what the sampler expects.
    """

    def __init__(self, net: nn.Module, path: Path, threads: int) -> None:
        import onnxruntime as ort  # the [onnx] extra: only this benchmark needs it

        super().__init__()
        self.reference = net
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None, batch: Tensor, num_graphs: int) -> Tensor:
        feed = {n: a.detach().float().numpy() if a.is_floating_point() else a.numpy()
                for n, a in zip(self.names, indexed_inputs(self.reference, x_t.float(), t, batch, num_graphs))}
        return torch.from_numpy(self.session.run(None, feed)[0]).to(x_t.dtype)


class QuantizedNetwork(nn.Module):
    """``quantize_dynamic`` of every ``nn.Linear`` of ``net``; keeps ``net`` as a submodule for its device."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.reference = net
        self.quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(net), {nn.Linear}, dtype=torch.qint8)

    def forward(self, *args) -> Tensor:
        return self.quantized(*args)


def onnx_missing() -> str | None:
    """Why the onnxruntime backend cannot run here (a module of the ``[onnx]`` extra is absent), or None."""
    import importlib.util

    absent = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if absent:
        return f"{', '.join(absent)} not installed (pip install -e '.[onnx]')"
    return None


def export_onnx(net: nn.Module, example: tuple[Tensor, ...], path: Path) -> float:
    """Export :class:`IndexedBondNetwork` of ``net`` to ``path`` with dynamic atom, edge, pair and molecule counts;
    returns the seconds it took."""
    from torch.export import Dim

    atoms, edges, pairs, graphs, rows = Dim("atoms"), Dim("edges"), Dim("pairs"), Dim("molecules"), Dim("rows")
    dynamic = {"x_t": {0: rows}, "t": {0: graphs}, "batch": {0: atoms}, "edges": {1: edges},
               "edge_pairs": {0: edges}, "pairs": {1: pairs}, "counts": {0: graphs}}
    start = time.perf_counter()
    program = torch.onnx.export(IndexedBondNetwork(net).eval(), example, dynamic_shapes=dynamic, dynamo=True,
                                verbose=False)
    program.save(str(path))
    return time.perf_counter() - start


def backend_network(name: str, net: nn.Module, work: Path, threads: int) -> nn.Module:
    """The network ``name`` runs: ``net`` itself for the eager and compiled backends, else its stand-in (ONNX
    Runtime reads this run's export of ``net``, ``work / ONNX_FILE``, written once by :func:`main`)."""
    if name == "onnxruntime":
        return OnnxRuntimeNetwork(net, work / ONNX_FILE, threads)
    if name == "int8 dynamic":
        return QuantizedNetwork(net)
    return net


def example_batch(module, batch_size: int) -> tuple[tuple[Tensor, ...], tuple]:
    """A fixed network input of ``batch_size`` molecules (sizes from the training histogram, seed 0):
    ``(indexed inputs, (x_t, t, None, batch, num_graphs))``."""
    g = torch.Generator().manual_seed(0)
    counts = torch.as_tensor(draw_atom_counts(module.atom_count_histogram, batch_size, g))
    batch = torch.repeat_interleave(torch.arange(batch_size), counts)
    pairs = upper_pairs(batch, batch_size)
    x_t = torch.randn(len(batch) + pairs.shape[1], 3 + module.net.feature_dim, generator=g)
    t = torch.rand(batch_size, generator=g)
    return indexed_inputs(module.net, x_t, t, batch, batch_size), (x_t, t, None, batch, batch_size)


def time_passes(call: Callable[[], Tensor], repeats: int) -> list[float]:
    """CPU seconds of ``repeats`` calls, after two warm-up calls (compilation and caches)."""
    with torch.no_grad():
        for _ in range(2):
            call()
        seconds = []
        for _ in range(repeats):
            start = time.process_time()
            call()
            seconds.append(time.process_time() - start)
    return seconds


def speed_row(name: str, module, args: argparse.Namespace, work: Path) -> dict:
    """One backend's CPU time per pass on the fixed batch, and its largest deviation from eager fp32 there."""
    indexed, plain = example_batch(module, args.batch_size)
    torch.set_num_threads(args.threads)
    net = backend_network(name, module.net, work, args.threads)
    with torch.no_grad():
        reference = module.net(*plain)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=name in BF16)
    with compiled_forward(module.net, name in COMPILED):
        def call() -> Tensor:
            with autocast:
                return net(*plain)
        seconds = time_passes(call, args.repeats)
        with torch.no_grad():
            deviation = float((call().float() - reference).abs().max())
    return {"backend": name, "cpu_seconds_per_pass": statistics.median(seconds), "passes": seconds,
            "max_abs_deviation": deviation, "threads": args.threads, "molecules_per_pass": args.batch_size,
            "atoms": int(plain[3].numel()), "edges": int(indexed[3].shape[1])}


def quality_row(name: str, module, counts: list[int], args: argparse.Namespace, work: Path) -> dict:
    """``--num`` molecules through backend ``name`` (same sizes and seeds for every backend), scored by the EDM
    metric; ``stable`` holds each molecule's verdict, for the paired comparison."""
    torch.set_num_threads(args.sampling_threads)
    original = module.net
    module.net = backend_network(name, original, work, args.sampling_threads)
    try:
        start = time.perf_counter()
        molecules = list(draw_molecules(module, counts, "dpmpp2m_sde", 50, torch.Generator().manual_seed(0),
                                        args.batch_size, "bf16" if name in BF16 else "fp32",
                                        name in COMPILED))
        seconds = time.perf_counter() - start
    finally:
        module.net = original
    m = evaluate_generated(molecules, train_smiles(), train_bond_smiles())
    stable = [bool(stable_atoms(z, pos).all()) for z, pos, *_ in molecules]  # EDM's verdict: atoms and positions
    return {"backend": name, "molecules": len(molecules), "molecule_stability": m["molecule_stability"],
            "validity": m["validity"], "atom_stability": m["atom_stability"], "stable": stable,
            "sampling_seconds": round(seconds, 1), "sampling_threads": args.sampling_threads}


def paired_difference(a: list[bool], b: list[bool], draws: int = 10_000) -> tuple[float, float, float]:
    """Mean of ``a - b`` over the same molecules and its 95 % bootstrap interval (resampling molecules)."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    index = np.random.default_rng(0).integers(0, len(diff), size=(draws, len(diff)))
    low, high = np.quantile(diff[index].mean(axis=1), [0.025, 0.975])
    return float(diff.mean()), float(low), float(high)


def verdicts(speed: list[dict], quality: list[dict]) -> dict[str, dict]:
    """Per backend: speed-up over eager fp32, stability difference with its interval, and whether it is adopted."""
    base_speed = next(r["cpu_seconds_per_pass"] for r in speed if r["backend"] == "eager fp32")
    base = next((r for r in quality if r["backend"] == "eager fp32"), None)
    out = {}
    for r in speed:
        q = next((x for x in quality if x["backend"] == r["backend"]), None)
        entry = {"speedup": base_speed / r["cpu_seconds_per_pass"]}
        if q is not None and base is not None:
            mean, low, high = paired_difference(q["stable"], base["stable"])
            entry.update(stability_difference=mean, interval=[low, high])
            entry["adopt"] = bool(entry["speedup"] > 1.05 and abs(mean) <= STABILITY_TOLERANCE)
        out[r["backend"]] = entry
    return out


def render(speed: list[dict], quality: list[dict], decided: dict[str, dict], args: argparse.Namespace) -> str:
    lines = [f"Bond-aware default network, one pass over {args.batch_size} molecules "
             f"({speed[0]['atoms']} atoms, {speed[0]['edges']:,} edges), CPU seconds on {args.threads} thread(s), "
             f"median of {args.repeats}; quality: {args.num} molecules per backend (dpmpp2m_sde, 50 steps, same seeds).",
             "", "| backend | CPU s / pass | speed-up | max deviation from fp32 | molecule stability | validity "
             "| stability - fp32 (95 % CI) | adopted |", "|---|---|---|---|---|---|---|---|"]
    for r in speed:
        q = next((x for x in quality if x["backend"] == r["backend"]), None)
        d = decided[r["backend"]]
        quality_cells = "- | - | -" if q is None else (
            f"{100 * q['molecule_stability']:.1f} % | {100 * q['validity']:.1f} % | "
            + ("-" if r["backend"] == "eager fp32" else
               f"{100 * d['stability_difference']:+.1f} [{100 * d['interval'][0]:+.1f}, {100 * d['interval'][1]:+.1f}]"))
        adopted = "reference" if r["backend"] == "eager fp32" else ("yes" if d.get("adopt") else "no")
        lines.append(f"| {r['backend']} | {r['cpu_seconds_per_pass']:.3f} | {d['speedup']:.2f}x | "
                     f"{r['max_abs_deviation']:.2g} | {quality_cells} | {adopted} |")
    return "\n".join(lines)


def rerender(path: str, update_readme: bool) -> int:
    """Rewrite a saved run's results block (and README row) from its rows, its provenance kept; the table's
    settings (batch size, threads, repeats, molecules) are those of the run's recorded command."""
    record = json.loads(Path(path).read_text())
    provenance = {k: record.pop(k) for k in PROVENANCE}
    record.pop("benchmark", None)
    recorded = parse_args(shlex.split(provenance["command"])[2:])  # "python benchmarks/...py --flags ..."
    record["verdicts"] = verdicts(record["speed"], record["quality"])
    markdown = render_record(record, recorded)
    print(markdown)
    write_result("molecules_cpu_inference", record, markdown, provenance=provenance)
    if update_readme:
        replace_readme_row("CPU inference backends (issue 32)", readme_row(record, recorded))
    return 0


def render_record(record: dict, args: argparse.Namespace) -> str:
    """The page block of a run: the table, and the backends whose quality the budget left out."""
    skipped = record["skipped_quality"]
    return render(record["speed"], record["quality"], record["verdicts"], args) + (
        f"\n\nQuality skipped (budget spent): {', '.join(skipped)}." if skipped else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return rerender(args.from_json, update_readme=not args.no_readme)
    if set(COMPILED) & set(args.backends) and (problem := compiler_missing()):
        args.backends = [b for b in args.backends if b not in COMPILED]
        print(f"skipping the compiled backends: {problem}", flush=True)
    if "onnxruntime" in args.backends and (problem := onnx_missing()):
        args.backends.remove("onnxruntime")
        print(f"skipping onnxruntime: {problem}", flush=True)
    deadline = time.perf_counter() + 60 * args.budget_minutes
    work = ROOT / "runs" / "benchmarks" / "cpu_inference"
    work.mkdir(parents=True, exist_ok=True)
    module = load_module(args.ckpt, domain="molecules").eval()
    backends = ["eager fp32"] + [b for b in args.backends if b != "eager fp32"]
    if "onnxruntime" in backends:  # exported once per run, from this run's checkpoint
        print(f"exported to ONNX in {export_onnx(module.net, example_batch(module, 4)[0], work / ONNX_FILE):.1f} s",
              flush=True)
    speed = []
    for name in backends:
        speed.append(speed_row(name, module, args, work))
        print({k: v for k, v in speed[-1].items() if k != "passes"}, flush=True)
    counts = draw_atom_counts(module.atom_count_histogram, args.num, torch.Generator().manual_seed(0))
    quality, skipped = [], []
    for name in backends:
        if time.perf_counter() > deadline:
            skipped.append(name)
            continue
        quality.append(quality_row(name, module, counts, args, work))
        print({k: v for k, v in quality[-1].items() if k != "stable"}, flush=True)
    record = {"checkpoint": args.ckpt, "speed": speed, "quality": quality, "verdicts": verdicts(speed, quality),
              "skipped_quality": skipped}
    write_result("molecules_cpu_inference", record, render_record(record, args), update_page=not args.no_readme)
    if not args.no_readme:
        replace_readme_row("CPU inference backends (issue 32)", readme_row(record, args))
    return 0


def readme_row(record: dict, args: argparse.Namespace) -> str:
    speed, decided = record["speed"], record["verdicts"]
    fastest = max((b for b in decided if decided[b].get("adopt")), key=lambda b: decided[b]["speedup"], default=None)
    cells = "; ".join(f"{r['backend']} {decided[r['backend']]['speedup']:.2f}x" for r in speed[1:])
    if not record["quality"]:
        adopted = "quality not measured yet, so none adopted"
    else:
        adopted = f"adopted: {fastest}" if fastest else "none adopted (none faster at equal stability)"
    return (f"| CPU inference backends (issue 32) | speed of one pass against eager fp32 ({args.threads} thread): {cells}; "
            f"{adopted} | none | the bundled default | [molecules_cpu_inference](docs/results/molecules_cpu_inference.md) |")


if __name__ == "__main__":
    sys.exit(main())
