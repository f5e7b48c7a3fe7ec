"""Every bundled checkpoint loads through the one finder, and checkpoints that name a class by its module path
from before House II (issue 27) still load (``checkpoints.MOVED_MODULES``)."""
import importlib
from pathlib import Path

import pytest
import torch

import sci_diffusion_medical
import sci_diffusion_molecules
from sci_diffusion.checkpoints import MOVED_MODULES, bundled_checkpoint, load_module, module_class_path
from sci_diffusion.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"molecules": sci_diffusion_molecules, "medical": sci_diffusion_medical}
BUNDLED = [(domain, model) for domain, package in PACKAGES.items() for model in package.BUNDLED_CHECKPOINTS]


def test_every_checkpoint_file_that_ships_is_in_its_domains_table():
    for domain, package in PACKAGES.items():
        shipped = {p.name for p in (REPO / "domains" / domain / "checkpoints").glob("*.ckpt")}
        assert shipped == set(package.BUNDLED_CHECKPOINTS.values())


@pytest.mark.parametrize("domain, model", BUNDLED)
def test_every_bundled_checkpoint_loads_and_names_a_class_that_exists_today(domain, model):
    path = bundled_checkpoint(PACKAGES[domain].__name__, model)
    module = load_module(path, domain=domain)
    module_name, class_name = module_class_path(module.checkpoint_record)
    assert type(module).__module__ == module_name and type(module).__qualname__ == class_name
    assert not module.training  # eval mode


def test_the_moved_modules_table_maps_only_gone_paths_to_importable_ones():
    for old, new in MOVED_MODULES.items():
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(old)
        importlib.import_module(new)


def test_a_checkpoint_that_names_its_class_by_the_old_module_path_loads(tmp_path):
    source = torch.load(bundled_checkpoint("sci_diffusion_molecules", "edm"), weights_only=True)
    assert source["sci_diffusion"]["module_class"] == "sci_diffusion_molecules.module:MoleculeDiffusion"  # as shipped
    moved = tmp_path / "old.ckpt"
    torch.save(source, moved)
    model = load_module(moved, domain="molecules")
    assert type(model).__module__ == "sci_diffusion_molecules.models.diffusion"


def test_a_missing_bundled_model_is_one_sentence_naming_the_flag(monkeypatch, tmp_path):
    monkeypatch.setitem(sci_diffusion_medical.BUNDLED_CHECKPOINTS, "synthesis", str(tmp_path / "gone.ckpt"))
    with pytest.raises(UserError, match="gone.ckpt is missing; pass --ckpt"):
        bundled_checkpoint("sci_diffusion_medical", "synthesis")
