"""Every molecules config names classes and arguments that exist: a typo fails here, not an hour
into a training run."""
import importlib
from pathlib import Path

import pytest
import yaml

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "molecules").glob("*.yaml"))


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
    assert set(data_args) <= set(data_cls.__init__.__code__.co_varnames)
    for callback in cfg["trainer"].get("callbacks", []):
        cb_cls, cb_args = build(callback)
        cb_cls(**cb_args)


def test_the_latent_configs_hold_latent_models():
    from sci_diffusion_molecules.models.latent import LatentMoleculeDiffusion

    for name in ("qm9_geoldm", "qm9_geoldm_small", "qm9_geoldm_small_two_stage"):
        cfg = yaml.safe_load((CONFIGS[0].parent / f"{name}.yaml").read_text())
        cls, args = build(cfg["model"])
        assert cls is LatentMoleculeDiffusion and args["latent_features"] == 1
