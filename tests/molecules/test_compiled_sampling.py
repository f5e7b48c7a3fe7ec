"""`torch.compile` for sampling (`sci_diffusion.compilation`, `sample molecules --compile`): the compiled
network draws the same molecules as the plain one, is compiled once, and a machine without a C++
compiler gets one sentence instead of an Inductor traceback."""
import shutil

import pytest
import torch

from sci_diffusion.checkpoints import load_module
from sci_diffusion.compilation import _COMPILED_ATTRIBUTE, compiled_forward
from sci_diffusion_molecules.generation.sampling import Guidance, sample_molecules
from tests.molecules.test_cli_conditional import sample

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile's CPU backend needs g++")


def draw(module, compile_network: bool) -> list[tuple]:
    """Five molecules of the tiny gap model with classifier-free guidance (both passes compiled)."""
    cond = module.property_conditioning.condition(torch.full((5, 1), 6.5, dtype=torch.float64))
    return list(sample_molecules(module, [4, 7, 9, 5, 6], "dpmpp2m_sde", 4, torch.Generator().manual_seed(3),
                                 batch_size=4, cond=cond, guidance=Guidance(scale=2.0), precision="fp32",
                                 compile_network=compile_network))


@pytest.mark.slow  # 70 s: two compiles of the guided network; the six-block test below keeps --compile in CI
@needs_compiler
def test_the_compiled_network_draws_the_plain_networks_molecules_and_compiles_once(conditional_checkpoint):
    module = load_module(conditional_checkpoint).eval()
    plain = draw(module, False)
    compiled = draw(module, True)
    assert "forward" not in vars(module.net)  # the block restored the class's forward
    for (z_plain, pos_plain), (z_compiled, pos_compiled) in zip(plain, compiled, strict=True):
        assert torch.equal(torch.as_tensor(z_plain), torch.as_tensor(z_compiled))
        assert torch.allclose(torch.as_tensor(pos_compiled), torch.as_tensor(pos_plain), atol=1e-4)
    with compiled_forward(module.net) as first:
        kept = first.forward
    with compiled_forward(module.net) as second:
        assert second.forward is kept  # the next block reuses the compiled function


def test_a_machine_without_a_cpp_compiler_gets_one_sentence_and_exit_2(conditional_checkpoint, classifier_checkpoint,
                                                                     tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    out = tmp_path / "x.sdf"
    assert sample(["--condition", "gap=6.5", "--compile"], conditional_checkpoint, classifier_checkpoint, out) == 2
    err = capsys.readouterr().err
    assert "--compile needs a C++ compiler" in err and err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="C\\+\\+ compiler"), compiled_forward(torch.nn.Linear(2, 2)):
        pass


@needs_compiler
def test_the_compiled_bond_aware_network_draws_the_plain_networks_molecules_and_bonds():
    """The bond-aware default samples through torch.compile too (``--compile``): the same atoms, positions and
    generated bonds as the plain network, in float32, up to rounding. Six blocks, as the bundled model has:
    compiled with ``dynamic=True``, torch 2.13's Inductor fails on six blocks (an ``UnboundLocalError`` on a
    buffer; two blocks compile), two batches of other sizes, so the automatic dynamic shapes recompile once."""
    from sci_diffusion_molecules.generation.bond_sampling import sample_bonded_molecules
    from sci_diffusion_molecules.models.bond_diffusion import BondMoleculeDiffusion

    torch.manual_seed(0)
    module = BondMoleculeDiffusion(hidden=16, layers=6, ema_decay=0, bond_prior="uniform", val_molecules=0).eval()
    runs = [list(sample_bonded_molecules(module, [4, 7, 5], "dpmpp2m_sde", 3, torch.Generator().manual_seed(3),
                                         batch_size=2, precision="fp32", compile_network=compiled))
            for compiled in (False, True)]
    assert getattr(module.net, _COMPILED_ATTRIBUTE, None) is not None  # the second run went through torch.compile
    for (z, pos, _, bonds), (z_c, pos_c, _, bonds_c) in zip(*runs, strict=True):
        assert torch.equal(torch.as_tensor(z), torch.as_tensor(z_c)) and (bonds == bonds_c).all()
        assert torch.allclose(torch.as_tensor(pos_c), torch.as_tensor(pos), atol=1e-4)
    assert "forward" not in vars(module.net)  # the block restored the class's forward
    with compiled_forward(module.net) as first:
        kept = first.forward
    with compiled_forward(module.net) as second:
        assert second.forward is kept  # the next block reuses the compiled function
