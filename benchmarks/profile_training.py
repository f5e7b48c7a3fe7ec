"""Where a training step's time goes: a CPU profile of ``fit`` on one config (issue 11, section 7).

    python benchmarks/profile_training.py --config configs/molecules/qm9_edm_small.yaml --steps 100

The model and data come from the config exactly as ``sci-diffusion fit --config`` builds them
(LightningCLI); the trainer keeps the config's precision and gradient clipping and the module's
own callbacks (EMA, end-of-training checkpoint), without validation or a logger. After
``--warmup`` steps it times ``--steps`` more and reports:

- steps/s and training molecules (samples) per second;
- the share of each part of a step, from Lightning's ``SimpleProfiler``: loading the batch, the
  forward pass and loss, the backward pass, the optimiser step (with gradient clipping), the EMA
  update and what Lightning spends around them;
- from ``torch.profiler`` over ``--profile-steps`` steps: the operators with the most CPU time,
  and how many times per step the host waits for a tensor's value (``aten::_local_scalar_dense``:
  ``.item()``, ``bool(tensor)``, ``if tensor:``), which on a GPU is a synchronisation each.

It writes ``benchmarks/results/<result-name>.json`` and the block of that name in docs/results/profile_training.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.profilers import SimpleProfiler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import PROVENANCE, write_result  # noqa: E402

# SimpleProfiler actions. Lightning runs the forward pass and the backward pass inside the optimiser's
# closure, so the optimiser's own share is its action's time less those two.
LOADING = "[_TrainingEpochLoop].train_dataloader_next"
FORWARD = "[Strategy]SingleDeviceStrategy.training_step"
BACKWARD = "[Strategy]SingleDeviceStrategy.backward"
OPTIMISER = "[LightningModule]{module}.optimizer_step"
EMA = "[Callback]WeightAveraging.on_train_batch_end"
SYNC_OP = "aten::_local_scalar_dense"


class StepClock(L.Callback):
    """Wall time from the start of step ``first`` to the start of step ``first + steps``: every
    interval holds one step and the loading of the batch after it."""

    def __init__(self, first: int, steps: int) -> None:
        self.first, self.stop, self.start, self.end = first, first + steps, None, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.first:
            self.start = time.perf_counter()
        elif trainer.global_step == self.stop:
            self.end = time.perf_counter()


class OperatorProfile(L.Callback):
    """``torch.profiler`` over ``steps`` training steps, starting at step ``first``."""

    def __init__(self, first: int, steps: int) -> None:
        self.first, self.steps, self.profiler, self.seen = first, steps, None, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.first and self.profiler is None:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.profiler.__enter__()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.profiler is not None and self.seen < self.steps:
            self.seen += 1
            if self.seen == self.steps:
                self.profiler.__exit__(None, None, None)


def build_from_config(config: str, seed: int):
    """The model and datamodule that ``sci-diffusion fit --config config`` trains, and the config's trainer
    settings."""
    from lightning.pytorch.cli import LightningCLI

    cli = LightningCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
                       subclass_mode_data=True, run=False, args=["--config", config, f"--seed_everything={seed}"],
                       save_config_kwargs={"overwrite": True}, trainer_defaults={"logger": False})
    return cli.model, cli.datamodule, cli.config["trainer"]


def profile(args) -> dict:
    model, data, trainer_config = build_from_config(args.config, args.seed)
    # Timed steps first, then the operator profile (the profiler slows the steps it records).
    clock = StepClock(args.warmup, args.steps)
    ops = OperatorProfile(args.warmup + args.steps, args.profile_steps)
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(max_steps=args.warmup + args.steps + args.profile_steps, precision=trainer_config["precision"],
                            gradient_clip_val=trainer_config["gradient_clip_val"], logger=False,
                            enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                            profiler=SimpleProfiler(dirpath=root, filename="simple"), callbacks=[clock, ops],
                            devices=1)
        trainer.fit(model, data)
    durations = trainer.profiler.recorded_durations
    seconds, timed_steps = clock.end - clock.start, args.steps
    batch_size = data.hparams.get("batch_size") if hasattr(data, "hparams") else None
    per_step_ms = 1000 * seconds / timed_steps
    def mean_ms(action: str) -> float:
        values = durations.get(action.format(module=type(model).__name__), [])  # one entry per step
        values = values[args.warmup + 1:args.warmup + timed_steps + 1] if action == LOADING else \
            values[args.warmup:args.warmup + timed_steps]  # the clock's intervals hold the next step's loading
        return 1000 * sum(values) / max(len(values), 1)

    forward, backward, optimiser = mean_ms(FORWARD), mean_ms(BACKWARD), mean_ms(OPTIMISER)
    parts = {"batch loading": mean_ms(LOADING), "forward + loss": forward, "backward": backward,
             "optimiser step (with gradient clipping)": optimiser - forward - backward, "EMA update": mean_ms(EMA)}
    parts["Lightning and the rest"] = per_step_ms - sum(parts.values())
    table = ops.profiler.key_averages()
    by_self = sorted(table, key=lambda e: e.self_cpu_time_total, reverse=True)
    total_self = sum(e.self_cpu_time_total for e in table)
    top = [{"op": e.key, "calls_per_step": round(e.count / args.profile_steps, 1),
            "self_cpu_share": round(e.self_cpu_time_total / total_self, 4)} for e in by_self[:args.top]]
    syncs = sum(e.count for e in table if e.key == SYNC_OP) / args.profile_steps
    copies = sum(e.count for e in table if e.key == "aten::copy_") / args.profile_steps
    device = str(next(model.parameters()).device)
    return {"config": args.config, "device": device, "threads": torch.get_num_threads(), "timed_steps": timed_steps,
            "warmup_steps": args.warmup, "batch_size": batch_size, "seconds": round(seconds, 2),
            "steps_per_second": round(timed_steps / seconds, 3),
            "molecules_per_second": round(timed_steps * batch_size / seconds, 1) if batch_size else None,
            "ms_per_step": round(per_step_ms, 2), "parts_ms": {k: round(v, 2) for k, v in parts.items()},
            "host_waits_per_step": round(syncs, 1), "copies_per_step": round(copies, 1),
            "profiled_steps": args.profile_steps, "top_operators": top,
            "operators_per_step": round(sum(e.count for e in table) / args.profile_steps)}


def markdown(result: dict, before: dict | None = None) -> str:
    lines = [f"One training step of `{result['config']}` on {result['threads']} CPU thread(s), "
             f"{result['timed_steps']} steps after {result['warmup_steps']} of warm-up: **{result['steps_per_second']} "
             f"steps/s, {result['molecules_per_second']} training molecules/s** (batch {result['batch_size']}).", "",
             "| part of a step | ms | share |", "|---|---|---|"]
    for part, ms in result["parts_ms"].items():
        lines.append(f"| {part} | {ms:.1f} | {100 * ms / result['ms_per_step']:.1f} % |")
    lines.append(f"| **step** | **{result['ms_per_step']:.1f}** | 100 % |")
    lines += ["", f"Per step ({result['profiled_steps']} steps under `torch.profiler`): {result['operators_per_step']:,} "
              f"operator calls, {result['host_waits_per_step']} host waits for a tensor's value "
              f"(`{SYNC_OP}`), {result['copies_per_step']} `aten::copy_`. Most CPU time (self):", "",
              "| operator | calls / step | share of CPU time |", "|---|---|---|"]
    for op in result["top_operators"]:
        lines.append(f"| `{op['op']}` | {op['calls_per_step']} | {100 * op['self_cpu_share']:.1f} % |")
    if before is not None:
        lines += ["", f"Before ({before['label']}, same machine, same command): {before['steps_per_second']} steps/s, "
                  f"{before['molecules_per_second']} training molecules/s, {before['operators_per_step']:,} operator calls "
                  f"and {before['host_waits_per_step']} host waits per step; parts (ms): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in before["parts_ms"].items()) + "."]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/molecules/qm9_edm_small.yaml")
    p.add_argument("--steps", type=int, default=100, help="timed steps after the warm-up")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--profile-steps", type=int, default=10, help="steps under torch.profiler (after the warm-up)")
    p.add_argument("--top", type=int, default=10, help="operators listed")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--result-name", default="profile_training")
    p.add_argument("--no-readme", action="store_true")
    p.add_argument("--before", metavar="RESULT_JSON", help="an earlier run of this script to show beside this one")
    p.add_argument("--before-label", default="an earlier commit", help="what --before measured")
    p.add_argument("--from-json", metavar="RESULT_JSON", help="re-render a saved run's results block, keeping its provenance")
    args = p.parse_args()
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        provenance = {k: result[k] for k in PROVENANCE}
        write_result(args.result_name, result, markdown(result, result.get("before")), provenance=provenance)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    from sci_diffusion.memory import keep_freed_memory

    keep_freed_memory()  # as the CLI does
    result = profile(args)
    before = None
    if args.before:
        before = {**json.loads(Path(args.before).read_text()), "label": args.before_label}
        result["before"] = {k: before[k] for k in ("label", "steps_per_second", "molecules_per_second", "parts_ms",
                                                   "operators_per_step", "host_waits_per_step", "command", "date")}
    path = write_result(args.result_name, result, markdown(result, before), update_page=not args.no_readme)
    print(markdown(result, before))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
