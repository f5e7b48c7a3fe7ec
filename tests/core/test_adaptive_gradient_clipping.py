"""EDM's adaptive gradient clipping (callbacks.AdaptiveGradientClipping) and the EDM recipe's config that uses it."""
from pathlib import Path

import pytest
import torch
import yaml

from sci_diffusion.callbacks import AdaptiveGradientClipping

REPO = Path(__file__).resolve().parents[2]


def step_with_gradient_norm(clipper: AdaptiveGradientClipping, module: torch.nn.Module, norm: float) -> float:
    """Give ``module`` a gradient of global norm ``norm``, run the clipper's hook; the norm left after it."""
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    scale = norm / float(torch.sqrt(sum((p.grad ** 2).sum() for p in module.parameters())))
    for p in module.parameters():
        p.grad *= scale
    clipper.on_before_optimizer_step(None, module, None)
    return float(torch.sqrt(sum((p.grad ** 2).sum() for p in module.parameters())))


def test_the_limit_is_edms_one_and_a_half_means_plus_two_stds_of_the_recent_norms():
    """Written out from EDM's utils.gradient_clipping: the history starts [3000] (limit 4500); a norm of 10 passes and
    joins it ([10, 3000]: 1.5 x 1505 + 2 x 1495 = 5247.5); once 50 norms of 1 have flushed the 3000, the limit is
    1.5, a spike of 100 is cut to 1.5, and 1.5 (not 100) is remembered."""
    module, clipper = torch.nn.Linear(3, 2), AdaptiveGradientClipping()
    assert clipper.limit() == pytest.approx(4500.0)
    assert step_with_gradient_norm(clipper, module, 10.0) == pytest.approx(10.0, rel=1e-5)
    assert clipper.norms == pytest.approx([10.0, 3000.0], rel=1e-5)
    assert clipper.limit() == pytest.approx(5247.5, rel=1e-5)
    for _ in range(50):
        step_with_gradient_norm(clipper, module, 1.0)
    assert len(clipper.norms) == 50 and clipper.limit() == pytest.approx(1.5, rel=1e-5) and clipper.clipped == 0
    assert step_with_gradient_norm(clipper, module, 100.0) == pytest.approx(1.5, rel=1e-5)
    assert clipper.norms[0] == pytest.approx(1.5, rel=1e-5) and clipper.clipped == 1
    resumed = AdaptiveGradientClipping()
    resumed.load_state_dict(clipper.state_dict())
    assert resumed.limit() == clipper.limit() and resumed.clipped == 1


def test_the_edm_config_is_edms_recipe():
    """configs/molecules/qm9_edm.yaml: EDM's network (9 x 256, full coords_range per block), AdamW with amsgrad,
    the adaptive clipping and no fixed clip or warm-up."""
    from sci_diffusion_molecules.models.diffusion import MoleculeDiffusion

    config = yaml.safe_load((REPO / "configs/molecules/qm9_edm.yaml").read_text())
    args = config["model"]["init_args"]
    assert "gradient_clip_val" not in config["trainer"] and "lr_warmup_steps" not in args
    model = MoleculeDiffusion(**{k: v for k, v in args.items() if k not in ("hidden", "layers")}, hidden=8, layers=2)
    optimiser = model.configure_optimizers()
    assert isinstance(optimiser, torch.optim.AdamW) and optimiser.defaults["amsgrad"] is True
    assert optimiser.defaults["lr"] == 1e-4 and optimiser.defaults["weight_decay"] == 1e-12
    assert any(isinstance(c, AdaptiveGradientClipping) for c in model.configure_callbacks())
    assert model.net.blocks[0].update.coords_range == 15.0  # EDM's full range in every block, not 15 / layers
    assert args["hidden"] == 256 and args["layers"] == 9 and args["ema_decay"] == 0.9999
