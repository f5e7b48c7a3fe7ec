"""Every molecules config names classes and arguments that exist: a typo fails here, not an hour
into a training run."""
import importlib
import inspect
from pathlib import Path

import pytest
import yaml

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "molecules").rglob("*.yaml"))


def accepted_arguments(cls) -> set[str]:
    """The keyword arguments ``cls(...)`` takes: its ``__init__``'s, and, while an ``__init__`` passes ``**kwargs``
    on, its parents'."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def build(spec):
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name), spec.get("init_args", {})


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_builds_its_model_and_names_real_callbacks(config):
    cfg = yaml.safe_load(config.read_text())
    cls, args = build(cfg["model"])
    model = cls(**args)
    assert sum(p.numel() for p in model.parameters()) > 0
    data_cls, data_args = build(cfg["data"])
    assert set(data_args) <= accepted_arguments(data_cls)
    for callback in cfg["trainer"].get("callbacks", []):
        cb_cls, cb_args = build(callback)
        cb_cls(**cb_args)


def test_the_latent_configs_hold_latent_models():
    from sci_diffusion_molecules.models.latent import LatentMoleculeDiffusion

    for name in ("qm9_geoldm", "qm9_geoldm_small", "qm9_geoldm_small_two_stage"):
        cfg = yaml.safe_load((CONFIGS[0].parent / f"{name}.yaml").read_text())
        cls, args = build(cfg["model"])
        assert cls is LatentMoleculeDiffusion and args["latent_features"] == 1
