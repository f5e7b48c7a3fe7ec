"""Training speed of the default molecule recipe on one GPU, in QM9 epochs per minute (issue 32, section 3).

    python3 benchmarks/gpu_training_speed.py --minutes 7 --compile --cache-dir .gpu/cache/qm9 --out "$OUT"   # a GPU
    python benchmarks/gpu_training_speed.py --device cpu --precision 32-true --minutes 1 --batch-size 8 --max-steps 5 --limit 200

It trains the model and data of ``--config`` (default: the recipe of the bundled default, arm h: the
bond-aware ``BondMoleculeDiffusion`` on ``QM9BondDataModule``, with the config's precision and gradient
clipping, EMA and learning-rate warm-up as ``sci-diffusion fit`` trains them) from scratch for a wall-clock
budget of ``--minutes``, as fast as this script knows how:

- bf16 autocast (the config's ``bf16-mixed``) and TF32 for what runs in float32;
- AdamW with ``fused=True`` (one kernel for all weights), the module's own optimiser and warm-up otherwise;
- ``torch.compile`` of the network's ``forward_on_graph`` (``--compile``; Dynamo's automatic dynamic shapes:
  the first batch compiles with its sizes, the second once more with the atom, pair and edge counts symbolic),
  the part of the step whose shapes follow from the batch's sizes alone (``dynamic=True``, every size symbolic
  from the start, miscompiles six-block bond networks on one CPU: ``sci_diffusion/compilation.py``);
- PyG collation in ``--workers`` DataLoader processes, pinned memory and non-blocking copies to the GPU,
  full batches only (``drop_last``).

**Batches are PyG's, not padded.** Static shapes would need a batch's atom count N, pair count P, edge count
E and molecule count G all fixed; the network builds its edge and pair indices from the batch vector with
``repeat_interleave`` (``egnn.fully_connected_edges``, ``bond_state.upper_pairs``), whose output size the host
must read, and its EGNN is a sparse one (scatter over edges), so a padded dense ``[G, 29]`` layout is another
network and padding inside the sparse layout needs filler molecules and masks through the loss. Both are
model changes; this script changes no model code, so ``--compile`` uses symbolic shapes and there are no CUDA
graphs (they would record one graph per batch shape).

It reports steps/s, samples (molecules)/s and **epochs per minute** (molecules trained / the training split's
size / minutes of the training loop, warm-up and compilation included), the rate after ``--warmup-steps``,
peak GPU memory, and the **verdict** against issue 32's target (at least 100 QM9 epochs in 15 minutes):
the epochs trained plus the steady rate times the minutes left to 15 (for a shorter run), or those of the
first 15 minutes. Into ``--out`` (default ``$OUT``) go ``gpu_training_speed.json`` (the format of
``benchmarks/reporting.py``: command, machine, date), the same table as Markdown, and ``last.ckpt``, a
Lightning checkpoint like any ``fit``'s (raw weights to resume with ``fit --ckpt_path``, EMA weights to sample),
saved every ``--save-minutes`` too, so a run stopped by its machine keeps its training.
``--from-json`` copies such a JSON into ``benchmarks/results/`` and its table into the docs/results page
that holds its markers. docs/gpu.md says how to carry the run to a GPU machine.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_packages_importable() -> None:
    """On a machine where the repository is not installed (a lent GPU machine with PyTorch, Lightning and PyG
    but no ``pip install``), put ``src/`` and the molecules domain, as ``sci_diffusion_molecules``, on the path."""
    if importlib.util.find_spec("sci_diffusion") is None:
        sys.path.insert(0, str(ROOT / "src"))
    if importlib.util.find_spec("sci_diffusion_molecules") is None:
        links = Path(tempfile.gettempdir()) / f"sci_diffusion_packages_{ROOT.name}_{os.getuid()}"
        links.mkdir(exist_ok=True)
        if not (links / "sci_diffusion_molecules").is_symlink():
            (links / "sci_diffusion_molecules").symlink_to(ROOT / "domains" / "molecules")
        sys.path.insert(0, str(links))


make_packages_importable()
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning as L  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from reporting import PROVENANCE, replace_readme_row, write_result  # noqa: E402
from torch_geometric.loader import DataLoader  # noqa: E402

from sci_diffusion.checkpoints import file_sha256  # noqa: E402

NAME = "gpu_training_speed"
README_CELL = "Training speed on one GPU (issue 32: >= 100 QM9 epochs of the default recipe in 15 minutes on one H100)"
DEFAULT_CONFIG = "configs/molecules/recipes/h_cooldown_gamma100.yaml"  # the bundled default's recipe (README)
TARGET_EPOCHS, TARGET_MINUTES = 100, 15  # issue 32: at least 100 QM9 epochs in 15 minutes on one H100


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help="a fit config: its model, data and trainer precision "
                   "and gradient clipping (its callbacks are left out: the wall clock is the budget here)")
    p.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget of the training loop")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps too (-1: no limit)")
    p.add_argument("--batch-size", type=int, default=256, help="molecules per step (the recipe's: 64)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: cuda where there is one")
    p.add_argument("--precision", default=None, help="Lightning precision (default: the config's, e.g. bf16-mixed)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network's forward_on_graph")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode (default, max-autotune-no-cudagraphs)")
    p.add_argument("--no-fused", action="store_true", help="AdamW without fused=True (the module's own optimiser)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: 8 on cuda, 0 on cpu)")
    p.add_argument("--warmup-steps", type=int, default=50, help="steps left out of the steady rate")
    p.add_argument("--log-every", type=int, default=100, help="record the training loss every this many steps")
    p.add_argument("--save-minutes", type=float, default=2.0, help="save last.ckpt every this many minutes")
    p.add_argument("--limit", type=int, default=None, help="the first N molecules of each split only (smoke tests)")
    p.add_argument("--cache-dir", default=None, help="the QM9 cache folder holding qm9_v1.npz and qm9_bonds_v1.npz "
                   "(default: $SCI_DIFFUSION_CACHE/qm9 or ~/.cache/sci-diffusion/qm9)")
    p.add_argument("--seed", type=int, default=None, help="default: the config's seed_everything")
    p.add_argument("--out", default=os.environ.get("OUT") or "runs/benchmarks/gpu_training_speed",
                   help="folder for the JSON, the Markdown table and last.ckpt (default: $OUT)")
    p.add_argument("--from-json", metavar="RESULT_JSON", help="copy a run's JSON into benchmarks/results/ and its "
                   "table into the docs/results page with its markers, keeping the run's provenance; nothing trains")


def class_from_path(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def build_from_config(args: argparse.Namespace, device: str) -> tuple[L.LightningModule, L.LightningDataModule, dict]:
    """The config's model (seeded as ``fit`` seeds it), its datamodule with this run's batch size, workers, cache and
    limit, and its trainer section. Read with PyYAML, not LightningCLI, so the GPU machine needs no jsonargparse."""
    config = yaml.safe_load((ROOT / args.config).read_text() if not Path(args.config).is_file()
                            else Path(args.config).read_text())
    L.seed_everything(config.get("seed_everything", 0) if args.seed is None else args.seed, workers=True)
    model = class_from_path(config["model"]["class_path"])(**config["model"].get("init_args", {}))
    workers = args.workers if args.workers is not None else (8 if device == "cuda" else 0)
    data_args = {**config["data"].get("init_args", {}), "batch_size": args.batch_size, "num_workers": workers,
                 "cache_dir": args.cache_dir, "limit": args.limit}
    data = class_from_path(config["data"]["class_path"])(**data_args)
    return model, data, config.get("trainer", {})


def fast_train_loader(data: L.LightningDataModule, pin_memory: bool) -> None:
    """Make the datamodule's ``train_dataloader`` shuffle full batches only (``drop_last``: every step the same
    number of molecules), collated in its ``num_workers`` processes that stay up across epochs and prefetch 4
    batches each, into pinned memory where the GPU copies from."""
    def train_dataloader() -> DataLoader:
        data.setup()
        workers = data.num_workers
        return DataLoader(data.datasets["train"], batch_size=data.batch_size, shuffle=True, drop_last=True,
                          num_workers=workers, persistent_workers=workers > 0, pin_memory=pin_memory,
                          prefetch_factor=4 if workers > 0 else None)

    data.train_dataloader = train_dataloader  # an instance attribute: Lightning's hook call finds it first


def tune_module(model: L.LightningModule, fused: bool) -> None:
    """Two speed changes to one module instance, so its checkpoint is still the same class's as any ``fit``'s:

    - its own ``configure_optimizers`` (AdamW, the warm-up schedule) with every parameter group's ``fused`` on
      (before the first step, when AdamW has made no state yet; its ``foreach`` off, as ``fused`` requires);
    - batches copied to the device with ``non_blocking=True`` (Lightning's default copy of a PyG batch blocks,
      so the host would wait for the previous step at every copy).
    """
    configure = model.configure_optimizers

    def configure_optimizers():
        configured = configure()
        optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
        if fused:
            for group in optimizer.param_groups:
                group["fused"], group["foreach"] = True, False
        return configured

    def transfer_batch_to_device(batch, device, dataloader_idx):
        return batch.to(device, non_blocking=True)

    model.configure_optimizers = configure_optimizers
    model.transfer_batch_to_device = transfer_batch_to_device


def compile_network(network: torch.nn.Module, mode: str) -> str:
    """``torch.compile`` the network's ``forward_on_graph`` (its ``forward`` after the index tensors are built, no
    shape depending on the batch's values) or, for a network without one, its ``forward``; kept as an instance
    attribute, so the state dict and the checkpoint are unchanged. Returns the compiled method's name."""
    name = "forward_on_graph" if hasattr(network, "forward_on_graph") else "forward"
    torch._dynamo.config.suppress_errors = True  # a compiler that fails falls back to eager: the run goes on
    setattr(network, name, torch.compile(getattr(network, name), mode=mode))
    return name


def compile_stats() -> dict:
    """What torch.compile did in this process (``torch._dynamo.utils.counters``): graphs compiled (more than one:
    recompilations), graph breaks, and frames it gave up on (run eagerly)."""
    counters = torch._dynamo.utils.counters
    return {"graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "frames_ok": int(counters["frames"].get("ok", 0)), "frames_total": int(counters["frames"].get("total", 0))}


class SpeedMeter(L.Callback):
    """The training loop's clock: counts steps and molecules, records the loss every ``log_every`` steps, takes the
    time after the first step and after ``warmup_steps``, and stops training once ``minutes`` have passed since
    the training started. The host reads the clock without waiting for the GPU, except at the loss records and
    at the end (``torch.cuda.synchronize``)."""

    def __init__(self, minutes: float, warmup_steps: int, log_every: int) -> None:
        self.minutes, self.warmup_steps, self.log_every = minutes, warmup_steps, log_every
        self.start = self.end = self.first_step_end = self.warm = None
        self.steps = self.samples = self.atoms = 0
        self.losses: list[tuple[int, float]] = []

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self.steps += 1
        self.samples += int(batch.num_graphs)
        self.atoms += int(batch.num_nodes)
        now = time.perf_counter()
        if self.steps == 1:
            self.first_step_end = now
        if self.steps == self.warmup_steps:
            self.warm = (now, self.steps, self.samples)
        if self.steps == 1 or self.steps % self.log_every == 0:
            self.losses.append((self.steps, float(outputs["loss"])))
        if now - self.start >= 60.0 * self.minutes:
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if torch.cuda.is_available() and module.device.type == "cuda":
            torch.cuda.synchronize()
        self.end = time.perf_counter()


def rates(meter: SpeedMeter, train_size: int) -> dict:
    """The run's figures: steps/s, molecules/s and epochs per minute over the whole training loop, and the same
    after the warm-up steps (None when the run had no more steps than that)."""
    seconds = meter.end - meter.start
    figures = {"steps": meter.steps, "samples": meter.samples, "atoms_per_step": meter.atoms / max(meter.steps, 1),
               "train_size": train_size, "train_seconds": seconds, "first_step_seconds": meter.first_step_end - meter.start,
               "steps_per_second": meter.steps / seconds, "samples_per_second": meter.samples / seconds,
               "epochs": meter.samples / train_size, "epochs_per_minute": epochs_per_minute(meter.samples, train_size, seconds)}
    steady = None
    if meter.warm is not None and meter.steps > meter.warm[1]:
        t, steps, samples = meter.warm
        steady_seconds = meter.end - t
        steady = {"after_steps": steps, "seconds": steady_seconds, "steps_per_second": (meter.steps - steps) / steady_seconds,
                  "samples_per_second": (meter.samples - samples) / steady_seconds,
                  "epochs_per_minute": epochs_per_minute(meter.samples - samples, train_size, steady_seconds)}
    figures["steady"] = steady
    return figures


def epochs_per_minute(samples: int, train_size: int, seconds: float) -> float:
    """Passes over a training split of ``train_size`` molecules per minute, at ``samples`` molecules in ``seconds``."""
    return samples / train_size / (seconds / 60.0)


def verdict(epochs: float, minutes: float, steady_epochs_per_minute: float | None) -> dict:
    """Issue 32's target, judged from a run of ``minutes`` that trained ``epochs``: the epochs of 15 minutes are
    those trained plus the steady rate (without one, the run's own rate) times the minutes left to 15 (negative
    for a run past 15 minutes: its rate takes back the overshoot)."""
    rate = steady_epochs_per_minute if steady_epochs_per_minute is not None else epochs / minutes
    projected = epochs + rate * (TARGET_MINUTES - minutes)
    return {"target": f">= {TARGET_EPOCHS} QM9 epochs in {TARGET_MINUTES} minutes", "target_epochs": TARGET_EPOCHS,
            "target_minutes": TARGET_MINUTES, "epochs_in_target_minutes": projected,
            "rate_used": "steady" if steady_epochs_per_minute is not None else "whole run",
            "projected": abs(minutes - TARGET_MINUTES) > 1e-9, "meets_target": projected >= TARGET_EPOCHS}


def gpu_memory(device: str) -> dict | None:
    if device != "cuda":
        return None
    return {"max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
            "max_reserved_mib": torch.cuda.max_memory_reserved() / 2**20,
            "total_mib": torch.cuda.get_device_properties(0).total_memory / 2**20}


def trainer_for(args: argparse.Namespace, device: str, trainer_config: dict, meter: SpeedMeter, out: Path) -> L.Trainer:
    saver = ModelCheckpoint(dirpath=out, save_last=True, save_top_k=0,
                            train_time_interval=timedelta(minutes=args.save_minutes))
    return L.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1,
                     precision=args.precision or trainer_config.get("precision", "32-true"),
                     gradient_clip_val=trainer_config.get("gradient_clip_val"), max_epochs=-1, max_steps=args.max_steps,
                     logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                     num_sanity_val_steps=0, callbacks=[meter, saver], default_root_dir=out)


def train(args: argparse.Namespace) -> dict:
    """Build, tune, train for the budget and return the run's record (without command, machine and date)."""
    process_start = time.perf_counter()
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        torch.cuda.reset_peak_memory_stats()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, data, trainer_config = build_from_config(args, device)
    fast_train_loader(data, pin_memory=device == "cuda")
    tune_module(model, fused=not args.no_fused)
    compiled = compile_network(model.net, args.compile_mode) if args.compile else None
    meter = SpeedMeter(args.minutes, args.warmup_steps, args.log_every)
    trainer = trainer_for(args, device, trainer_config, meter, out)
    trainer.fit(model, data)
    figures = rates(meter, len(data.datasets["train"]))
    checkpoint = out / "last.ckpt"
    optimizer = trainer.optimizers[0]
    return {"config": args.config, "model_class": type(model).__name__, "device": device,
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None, "batch_size": args.batch_size,
            "precision": str(trainer.precision), "tf32": device == "cuda", "compiled": compiled,
            "compile_mode": args.compile_mode if compiled else None, "compile_stats": compile_stats() if compiled else None,
            "fused_optimizer": all(g.get("fused") for g in optimizer.param_groups),
            "workers": data.num_workers, "pin_memory": device == "cuda", "drop_last": True,
            "batching": "PyG (dynamic shapes, no padding, no CUDA graphs; see the script's docstring)",
            "budget_minutes": args.minutes, "max_steps": args.max_steps, "warmup_steps": args.warmup_steps,
            "setup_seconds": meter.start - process_start, **figures,
            "verdict": verdict(figures["epochs"], figures["train_seconds"] / 60.0,
                               (figures["steady"] or {}).get("epochs_per_minute")),
            "gpu_memory": gpu_memory(device), "losses": meter.losses, "global_step": trainer.global_step,
            "checkpoint": {"file": checkpoint.name, "sha256": file_sha256(checkpoint)} if checkpoint.is_file() else None}


def render(r: dict) -> str:
    """The run's table (Markdown)."""
    v, steady, memory = r["verdict"], r["steady"], r["gpu_memory"]
    verdict_text = "meets" if v["meets_target"] else "misses"
    lines = [f"`{r['config']}` ({r['model_class']}) on {r['gpu'] or r['device']}, batch {r['batch_size']}, "
             f"{r['precision']}, compiled: {r['compiled'] or 'no'}, fused AdamW: {'yes' if r['fused_optimizer'] else 'no'}, "
             f"{r['workers']} workers; {r['batching']}.", "",
             "| figure | whole run | after the warm-up |", "|---|---|---|",
             f"| minutes of training | {r['train_seconds'] / 60:.2f} | "
             f"{steady['seconds'] / 60:.2f} (from step {steady['after_steps']}) |" if steady else
             f"| minutes of training | {r['train_seconds'] / 60:.2f} | (no more steps than {r['warmup_steps']}) |"]
    for key, label in (("steps_per_second", "steps/s"), ("samples_per_second", "molecules/s"),
                       ("epochs_per_minute", "QM9 epochs per minute")):
        lines.append(f"| {label} | {r[key]:.3f} | {steady[key]:.3f} |" if steady else f"| {label} | {r[key]:.3f} | |")
    lines += [f"| steps, epochs | {r['steps']:,}, {r['epochs']:.2f} (training split: {r['train_size']:,} molecules) | |",
              "", f"First step (compilation included): {r['first_step_seconds']:.1f} s; set-up before training "
              f"{r['setup_seconds']:.1f} s; mean atoms per step {r['atoms_per_step']:.0f}."]
    if memory:
        lines.append(f"Peak GPU memory: {memory['max_allocated_mib']:,.0f} MiB allocated, "
                     f"{memory['max_reserved_mib']:,.0f} MiB reserved of {memory['total_mib']:,.0f}.")
    lines.append(f"**Verdict: {verdict_text} the target** ({v['target']}): {v['epochs_in_target_minutes']:.1f} epochs in "
                 f"{v['target_minutes']} minutes" + (f" (projected at the {v['rate_used']} rate)." if v["projected"] else "."))
    if r.get("compile_stats"):
        c = r["compile_stats"]
        lines.append(f"torch.compile: {c['graphs']} graph(s), {c['graph_breaks']} graph break(s), "
                     f"{c['frames_ok']} of {c['frames_total']} frames compiled.")
    return "\n".join(lines)


def readme_row(r: dict) -> str:
    """The README's results row of a run (its first cell is ``README_CELL``)."""
    v, steady = r["verdict"], r["steady"] or {}
    rate = steady.get("epochs_per_minute", r["epochs_per_minute"])
    ours = (f"{rate:.2f} QM9 epochs per minute ({steady.get('samples_per_second', r['samples_per_second']):,.0f} "
            f"molecules/s, batch {r['batch_size']}, compiled: {r['compiled'] or 'no'}) on {r['gpu'] or r['device']}: "
            f"{v['epochs_in_target_minutes']:.1f} epochs in {v['target_minutes']} minutes"
            f"{' (projected)' if v['projected'] else ''}, **{'meets' if v['meets_target'] else 'misses'} the target**")
    return (f"| {README_CELL} | {ours} | none | {r['train_seconds'] / 60:.1f} minutes on the GPU | "
            f"[gpu_training_speed](docs/results/gpu_training_speed.md), [how to run](docs/gpu.md) |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    if args.from_json:
        record = json.loads(Path(args.from_json).read_text())
        payload = {k: v for k, v in record.items() if k not in (*PROVENANCE, "benchmark")}
        print(f"wrote {write_result(NAME, payload, render(record), provenance={k: record[k] for k in PROVENANCE})}")
        replace_readme_row(README_CELL, readme_row(record))
        return 0
    result = train(args)
    out = Path(args.out)
    path = write_result(NAME, result, render(result), out=out / f"{NAME}.json", update_page=False)
    (out / f"{NAME}.md").write_text(render(result) + "\n")
    print(render(result))
    print(f"wrote {path}, {out / f'{NAME}.md'} and {out / 'last.ckpt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
