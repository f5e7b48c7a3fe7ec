"""The ``sci-diffusion`` command line.

- ``fit | validate | test --config CFG.yaml [--trainer.max_epochs 3 ...]``: LightningCLI.
- ``demo``: the samplers on the analytic Gaussian mixture (no network, no checkpoint).
- every domain verb found through the ``sci_diffusion.domains`` entry points.

Bad input (``UserError``, a missing file) prints one sentence and exits with status 2; ``--debug``
shows the traceback of any failure.
"""
from __future__ import annotations

import argparse
import re
import sys
from argparse import ArgumentError
from collections.abc import Sequence
from pathlib import Path

from .domains import Command, available_domains
from .errors import UserError
from .memory import keep_freed_memory
from .names import SAMPLER_NAMES, SCHEDULE_NAMES

LIGHTNING_VERBS = ("fit", "validate", "test")


def run_lightning(argv: Sequence[str]) -> int:
    """Run LightningCLI on ``argv`` (``fit --config ...``), the way ``lightning`` itself would; a config
    that does not parse becomes one sentence (:func:`config_error_sentence`)."""
    # Lightning and jsonargparse take seconds to import and only the training verbs need them: `--help`,
    # `demo` and the domains' verbs start without them.
    import lightning as L
    from jsonargparse import lazy_instance
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.loggers import CSVLogger

    class ResumingCLI(LightningCLI):
        def before_fit(self) -> None:
            if self.config_init["fit"].get("ckpt_path") == "last":
                self.config_init["fit"]["ckpt_path"] = newest_last_checkpoint(self.trainer)

    try:
        ResumingCLI(
            L.LightningModule,  # a DiffusionModule, or another model of a domain (e.g. a property classifier)
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=None if list(argv) == sys.argv[1:] else list(argv),  # the console script: LightningCLI reads argv
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "logger": lazy_instance(CSVLogger, save_dir="runs"),
            },
            parser_kwargs={"exit_on_error": False},
        )
    except ArgumentError as exc:
        raise UserError(config_error_sentence(str(exc), argv)) from None
    return 0


def newest_last_checkpoint(trainer) -> str:
    """What ``--ckpt_path last`` resumes: the newest ``last*.ckpt`` of this run's name, across the logger's
    versions (a killed run's ``runs/<name>/version_3/checkpoints/last.ckpt`` when the new run is
    ``version_4``; Lightning alone looks only in the new, empty folder and starts from scratch)."""
    logger = trainer.logger
    folders = []
    if logger is not None and getattr(logger, "save_dir", None) is not None:
        folders.append(Path(logger.save_dir) / str(logger.name))
    checkpoint_dir = getattr(trainer.checkpoint_callback, "dirpath", None)
    if checkpoint_dir:
        folders.append(Path(checkpoint_dir))
    found = [p for folder in folders if folder.is_dir() for p in folder.rglob("last*.ckpt")]
    if not found:
        raise UserError(f"--ckpt_path last: no last*.ckpt under {' or '.join(map(str, folders)) or 'the run folder'} "
                        "to resume from.")
    return str(max(found, key=lambda p: p.stat().st_mtime))


def config_error_sentence(message: str, argv: Sequence[str]) -> str:
    """One sentence from jsonargparse's nested report: the config file, the key and the innermost
    problem, e.g. ``qm9.yaml: model.hidden: Expected a <class 'int'>. Got value: many``."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    keys = [m.group(1) for line in lines if (m := re.match(r'Parser key "([^"]+)":', line))]
    noise = ("Parser key", "Does not validate", "Subtypes:", "Errors:", "Given value", "- Problem with given",
             "- Expected a <class 'NoneType'>")
    details = [line.lstrip("- ") for line in lines if not line.startswith(noise)]
    argv = list(argv)
    config = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config", "-c")), "the command line")
    where = f"{config}: {'.'.join(keys)}" if keys else config
    return f"{where}: {details[0] if details else lines[0] if lines else 'the arguments do not parse'}."


def _core_commands() -> list[Command]:
    return [Command("demo", None, "Run every sampler on an analytic 2-D Gaussian mixture and plot the result.",
                    add_demo_arguments, "sci_diffusion.demo:run_demo"),
            Command("export", None, "Slim a training checkpoint to its (EMA) weights and record, for shipping.",
                    add_export_arguments, "sci_diffusion.checkpoints:run_export"),
            Command("report", None, "Write one self-contained HTML page of a run's output (3-D molecules, volumes, "
                    "metrics), to open offline.", add_report_arguments, "sci_diffusion.report.command:run_report")]


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samplers", default=",".join(SAMPLER_NAMES), help="comma-separated sampler names")
    p.add_argument("--steps", default="5,10,20,50", help="comma-separated step counts")
    p.add_argument("--num", type=int, default=5000, help="samples per run")
    p.add_argument("--schedule", default="polynomial_2", choices=SCHEDULE_NAMES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/demo", help="folder for demo.json and demo.png")


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="a training checkpoint (.ckpt)")
    p.add_argument("--out", required=True, help="the slim checkpoint to write")
    p.add_argument("--budget", help="the training budget, recorded as training_budget (e.g. '2 h on 2 CPU cores')")


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_output", metavar="RUN_OUTPUT",
                   help="a run's output: molecules (sample molecules' .sdf/.xyz, or evaluate molecules' metrics .json), "
                        "a synthetic CT (translate's --out), evaluate mri2ct's metrics .json, or a data set folder "
                        "(synthesize medical, phantom)")
    p.add_argument("--out", required=True, help="the page to write (.html): one file, everything inlined, opens offline")


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors (an unknown choice, a missing flag) are one sentence and
    exit status 2, like every other bad input, instead of a usage block. Its subparsers are too."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message} (see `{self.prog} --help`).")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="sci-diffusion",
        description="Diffusion models for scientific data. Training verbs (fit, validate, test) take "
                    "LightningCLI arguments, e.g. `sci-diffusion fit --config configs/molecules/qm9_edm_small.yaml`.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in LIGHTNING_VERBS:
        verbs.add_parser(verb, help=f"LightningCLI {verb} (see `sci-diffusion {verb} --help`)", add_help=False)
    commands = _core_commands() + [c for d in available_domains().values() for c in d.commands]
    grouped: dict[str, argparse._SubParsersAction] = {}
    for cmd in commands:
        if cmd.target is None:
            sub = verbs.add_parser(cmd.verb, help=cmd.help, description=cmd.help)
        else:
            if cmd.verb not in grouped:
                verb_parser = verbs.add_parser(cmd.verb, help=f"{cmd.verb} (by domain)")
                grouped[cmd.verb] = verb_parser.add_subparsers(dest="target", metavar="DOMAIN", required=True)
            sub = grouped[cmd.verb].add_parser(cmd.target, help=cmd.help, description=cmd.help)
        cmd.add_arguments(sub)
        sub.set_defaults(_command=cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb. Bad input: one sentence on stderr and exit status 2. Any other failure: one
    sentence and status 1, with the traceback only under ``--debug`` (anywhere on the line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    keep_freed_memory()
    try:
        if argv and argv[0] in LIGHTNING_VERBS:
            return run_lightning(argv)
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "_command", None) is None:
            parser.print_help()
            return 0 if not argv else 2
        return args._command.runner()(args) or 0
    except (UserError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
            PermissionError) as exc:
        if debug:
            raise
        print(f"sci-diffusion: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sci-diffusion: interrupted.", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: say so in one line; --debug shows where
        if debug:
            raise
        print(f"sci-diffusion: error: {type(exc).__name__}: {exc} (an internal error; run again with --debug for "
              "the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
