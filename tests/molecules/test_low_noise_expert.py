"""``sample molecules --expert CKPT``: a low-noise expert of a bond-aware model (trained with ``loss_max_time``)
answers the late network calls of a run, restarts and polishing included; the records name it; an expert that is
none, of another kind or asked beyond its times is refused in one sentence."""
import json

import pytest
import torch

from sci_diffusion.checkpoints import load_module
from sci_diffusion.cli import main
from sci_diffusion.polish import Polish
from sci_diffusion_molecules.data.bond_datamodule import QM9BondDataModule
from sci_diffusion_molecules.generation.bond_sampling import draw_molecules
from sci_diffusion_molecules.generation.sampling import Expert
from sci_diffusion_molecules.models.bond_diffusion import BondMoleculeDiffusion

from .conftest import fit_tiny
from .test_consistency_cli import QUIET, refusal, teacher  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def expert(tmp_path_factory):
    """A bond-aware model trained 2 steps on times up to 0.15 only."""
    model = BondMoleculeDiffusion(hidden=16, layers=2, val_molecules=0, loss_max_time=0.15)
    return fit_tiny(model, QM9BondDataModule(batch_size=4, limit=16), tmp_path_factory.mktemp("expert"), steps=2)


def test_the_expert_answers_the_late_calls_and_the_model_the_others(teacher, expert):  # noqa: F811 (fixture)
    model, late = load_module(teacher, domain="molecules").eval(), load_module(expert, domain="molecules").eval()
    seen = {"model": [], "expert": []}
    for name, module in (("model", model), ("expert", late)):
        module.net.register_forward_pre_hook(lambda net, args, name=name: seen[name].append(float(args[1].max())))
    molecules = list(draw_molecules(model, [5, 6], "dpmpp2m_sde", 10, torch.Generator().manual_seed(0), 2,
                                    precision="fp32", polish=Polish(2, 0.02), expert=Expert(late, 0.15)))
    assert len(molecules) == 2 and min(seen["model"]) > 0.15 and max(seen["expert"]) <= 0.15 + 1e-6
    assert len(seen["model"]) + len(seen["expert"]) == 10 + 2 and seen["expert"][-2:] == pytest.approx([0.02] * 2)


def test_the_cli_samples_with_an_expert_records_it_and_refuses_bad_ones(teacher, expert, tmp_path,  # noqa: F811
                                                                       capsys):
    out = tmp_path / "e.sdf"
    base = ["sample", "molecules", "--ckpt", str(teacher), "--num", "2", "--atoms", "5", "--steps", "4", *QUIET]
    assert main([*base, "--expert", str(expert), "--polish", "1", "--out", str(out)]) == 0
    summary = json.loads(out.with_suffix(".sdf.json").read_text())
    assert summary["expert"].startswith(str(expert)) and summary["expert"].endswith("at t <= 0.15")
    bad = tmp_path / "bad" / "e.sdf"
    assert "no low-noise expert" in refusal([*base, "--expert", str(teacher), "--out", str(bad)], capsys)
    assert "must lie in (0, 0.15]" in refusal([*base, "--expert", str(expert), "--expert-below", "0.3",
                                                "--out", str(bad)], capsys)
    assert not bad.parent.exists() or list(bad.parent.iterdir()) == []


def test_the_bundled_default_samples_with_its_bundled_expert(tmp_path):
    out = tmp_path / "b.sdf"
    assert main(["sample", "molecules", "--num", "2", "--steps", "4", "--expert", "bundled", "--out", str(out),
                 *QUIET]) == 0
    expert = json.loads(out.with_suffix(".sdf.json").read_text())["expert"]
    assert "qm9_bonds_x0_expert.ckpt" in expert and expert.endswith("at t <= 0.15")
