"""Loading trained modules from checkpoints, with a clear error for the wrong file or domain."""
from __future__ import annotations

import hashlib
import importlib
import pickle
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import __version__
from .atomic import atomic_path
from .errors import UserError

if TYPE_CHECKING:
    import lightning as L


def file_sha256(path: str | Path, length: int = 16) -> str:
    """The first ``length`` hex digits of the file's SHA-256 (recorded in every output)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def training_record(module: L.LightningModule, domain: str) -> dict:
    """The ``sci_diffusion`` record that every checkpoint of this package carries.

    It names the package version, the domain, the module class and the config that rebuild the
    module (:func:`load_module`), and the datamodule's config. Any LightningModule of the package
    (a diffusion model, a property classifier) writes it from ``on_save_checkpoint``.
    """
    trainer = module._trainer
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    return {
        "version": __version__,
        "domain": domain,
        "module_class": f"{type(module).__module__}:{type(module).__qualname__}",
        "config": {k: v for k, v in module.hparams.items() if not k.startswith("_")},  # no LightningCLI _class_path
        "data_config": dict(getattr(datamodule, "hparams", {}) or {}),
    }


def bundled_checkpoint(package: str, model: str, flag: str = "--ckpt") -> Path:
    """The file of a trained model that ships inside a domain package: ``<package>/checkpoints/<name>``,
    where ``<name>`` is the package's ``BUNDLED_CHECKPOINTS[model]`` (its ``checkpoints/README.md`` says how
    each was trained). The one way every domain finds its bundled models.

    Args:
        package: the domain package, e.g. ``"sci_diffusion_molecules"``.
        model: a key of its ``BUNDLED_CHECKPOINTS`` table, e.g. ``"unconditional"``.
        flag: the command-line flag that passes another checkpoint, named in the error.

    Raises:
        UserError: the file is not there (an install without the package data).
    """
    name = importlib.import_module(package).BUNDLED_CHECKPOINTS[model]
    path = Path(str(files(package).joinpath("checkpoints"))) / name  # an absolute ``name`` stays as it is
    if not path.is_file():
        raise UserError(f"The bundled {model} model {path} is missing; pass {flag} with a checkpoint of your own.")
    return path


def read_checkpoint(path: str | Path) -> dict:
    """Read a sci-diffusion checkpoint file; UserError if it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Checkpoint {path} does not exist.")
    try:  # weights_only: tensors and plain containers only, so a checkpoint cannot run code when read
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path} holds Python objects besides weights and plain data; sci-diffusion reads "
                        "checkpoints with torch.load(weights_only=True) and will not unpickle them.") from None
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}).") from None
    if not isinstance(ckpt, dict) or "sci_diffusion" not in ckpt:
        raise UserError(f"{path} is not a sci-diffusion checkpoint (it has no 'sci_diffusion' record).")
    return ckpt


# Where the classes of checkpoints written before House II (issue 27) live now: ``old module -> new module``.
# A checkpoint names its class as ``module:Class``; a user's old checkpoint keeps loading through this table.
MOVED_MODULES = {
    "sci_diffusion_molecules.module": "sci_diffusion_molecules.models.diffusion",
    "sci_diffusion_molecules.latent": "sci_diffusion_molecules.models.latent",
    "sci_diffusion_molecules.property_model": "sci_diffusion_molecules.models.property_model",
    "sci_diffusion_medical.module": "sci_diffusion_medical.models.diffusion",
    "sci_diffusion_medical.regression": "sci_diffusion_medical.models.regression",
    "sci_diffusion_medical.residual": "sci_diffusion_medical.models.residual",
    "sci_diffusion_medical.synthesis": "sci_diffusion_medical.models.synthesis",
}


def module_class_path(record: dict) -> tuple[str, str]:
    """``(module, class name)`` of the module a checkpoint's ``sci_diffusion`` record holds, with a module
    that has moved since the checkpoint was written mapped to where it is now (:data:`MOVED_MODULES`)."""
    module_name, _, class_name = record["module_class"].partition(":")
    return MOVED_MODULES.get(module_name, module_name), class_name


def module_class_name(record: dict) -> str:
    """The class name of the module a checkpoint's ``sci_diffusion`` record holds (``"MRItoCTRegression"``
    of ``"sci_diffusion_medical.models.regression:MRItoCTRegression"``)."""
    return record["module_class"].rpartition(":")[2]


def load_module(path: str | Path, domain: str | None = None) -> torch.nn.Module:
    """Rebuild the trained module of a checkpoint (EMA weights when EMA was on), in eval mode.

    Args:
        path: the ``.ckpt`` file.
        domain: if given, the checkpoint must belong to this domain (else UserError).

    The module carries ``checkpoint_path``, ``checkpoint_hash`` (sha256 prefix) and
    ``checkpoint_record`` (the sci-diffusion record, with the training step).
    """
    ckpt = read_checkpoint(path)
    meta = ckpt["sci_diffusion"]
    if domain is not None and meta["domain"] != domain:
        raise UserError(f"Checkpoint {path} belongs to the {meta['domain']!r} domain, not {domain!r}.")
    module_name, cls_name = module_class_path(meta)
    cls = getattr(importlib.import_module(module_name), cls_name)
    module = cls(**{k: v for k, v in meta["config"].items() if not k.startswith("_")})
    module.load_state_dict(ckpt["state_dict"])
    module.on_load_checkpoint(ckpt)
    module.eval()
    module.checkpoint_path = str(path)
    module.checkpoint_hash = file_sha256(path)
    module.checkpoint_record = {**meta, "global_step": meta.get("global_step", ckpt.get("global_step"))}
    return module


def run_export(args) -> int:
    """``sci-diffusion export --ckpt C --out O [--budget TEXT]``: :func:`export_for_inference`, and one line
    saying what was written."""
    out = export_for_inference(args.ckpt, args.out, {"training_budget": args.budget} if args.budget else None)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, sha256 {file_sha256(out)})")
    return 0


def export_for_inference(src: str | Path, dst: str | Path, extra: dict | None = None) -> Path:
    """Write a slim copy of a training checkpoint: the (EMA) weights and the sci-diffusion record,
    without optimizer state or the raw weights. This is what ships inside the package.

    ``extra`` is merged into the record (e.g. ``training_budget``); a run with a ``CpuTimeBudget`` also records the
    CPU-hours behind the weights as ``cpu_hours``, so that training can go on from the slim copy (a warm start)."""
    ckpt = read_checkpoint(src)
    spent = ckpt.get("callbacks", {}).get("CpuTimeBudget", {}).get("cpu_seconds")
    hours = {} if spent is None else {"cpu_hours": round(spent / 3600.0, 4)}  # a warm start's CpuTimeBudget(spent_hours)
    slim = {"state_dict": {k: v.clone() for k, v in ckpt["state_dict"].items()},
            "sci_diffusion": {**ckpt["sci_diffusion"], "global_step": ckpt.get("global_step"),
                              "epoch": ckpt.get("epoch"), "exported_from": Path(src).name, **hours, **(extra or {})}}
    with atomic_path(dst, suffix=".ckpt") as tmp:
        torch.save(slim, tmp)
    return Path(dst)
