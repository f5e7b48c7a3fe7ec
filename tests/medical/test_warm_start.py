"""``init_from``: a medical model starts training from the weights of a trained checkpoint of the same model."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sci_diffusion.checkpoints import read_checkpoint
from sci_diffusion_medical.models.diffusion import MRItoCTDiffusion
from sci_diffusion_medical.models.regression import MRItoCTRegression
from sci_diffusion_medical.models.residual import MRItoCTResidualDiffusion

from .conftest import TINY_FIT, tiny_fit

TINY_RESIDUAL = dict(channels=(8, 16, 16), attention_levels=(False, False, True), num_head_channels=8, norm_num_groups=8)


def _assert_weights_are(module: torch.nn.Module, ckpt_path) -> None:
    theirs = read_checkpoint(ckpt_path)["state_dict"]
    mine = module.state_dict()
    assert mine.keys() == theirs.keys()
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=0, msg=key)


def test_a_residual_model_starts_from_every_network_of_its_checkpoint(regression_ckpt, residual_ckpt):
    model = MRItoCTResidualDiffusion(regression_ckpt=str(regression_ckpt), init_from=str(residual_ckpt),
                                     scale_channels=(16, 32, 64), **TINY_RESIDUAL)
    torch.nn.init.constant_(next(model.scale_net.parameters()), 0.5)  # differs from the checkpoint before
    model.start_from_checkpoint()
    _assert_weights_are(model, residual_ckpt)  # diffusion network, scale network and frozen regression


def test_a_regression_model_starts_from_its_checkpoint(regression_ckpt):
    model = MRItoCTRegression(channels=(8, 16), num_res_units=1, init_from=str(regression_ckpt))
    model.start_from_checkpoint()
    _assert_weights_are(model, regression_ckpt)


def test_a_checkpoint_of_another_model_or_size_is_refused_in_one_sentence(regression_ckpt, residual_ckpt):
    with pytest.raises(ValueError, match=r"holds a .*MRItoCTRegression, not a MRItoCTDiffusion to start from\.$"):
        MRItoCTDiffusion(init_from=str(regression_ckpt), **TINY_RESIDUAL).start_from_checkpoint()
    wider = MRItoCTRegression(channels=(8, 32), num_res_units=1, init_from=str(regression_ckpt))
    with pytest.raises(ValueError, match=r"has other network sizes than this model \(first difference: net\.") as err:
        wider.start_from_checkpoint()
    assert "\n" not in str(err.value)


def test_fit_with_init_from_continues_from_the_checkpoint(phantom_dir, regression_ckpt, residual_ckpt, tmp_path):
    """Through the CLI: zero learning rate, so the continued model's weights are the checkpoint's."""
    assert "--trainer.max_steps=2" in TINY_FIT
    out = tiny_fit("mri2ct_residual.yaml", phantom_dir, tmp_path, [
        f"--model.regression_ckpt={regression_ckpt}", f"--model.init_from={residual_ckpt}", "--model.lr=0",
        "--model.channels=[8,16,16]", "--model.attention_levels=[false,false,true]", "--model.num_head_channels=8",
        "--model.norm_num_groups=8", "--model.val_slices=2", "--model.val_steps=1"])
    theirs, mine = read_checkpoint(residual_ckpt)["state_dict"], read_checkpoint(out)["state_dict"]
    for key in theirs:
        torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=1e-6, msg=key)


def test_fit_from_a_checkpoint_of_another_model_exits_2_in_one_sentence(phantom_dir, regression_ckpt, tmp_path, capsys):
    from sci_diffusion.cli import main

    repo = Path(__file__).resolve().parents[2]
    rc = main(["fit", "--config", str(repo / "configs" / "medical" / "mri2ct_phantom.yaml"), f"--data.root={phantom_dir}",
               f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}", *TINY_FIT,
               f"--model.init_from={regression_ckpt}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "not a MRItoCTDiffusion to start from." in err
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing trained, nothing written
