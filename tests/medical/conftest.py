"""What the medical tests share: phantoms generated once per test session (small enough to keep the suite fast),
tiny models fitted once through the CLI, and the checks of a one-sentence error."""

from pathlib import Path

import numpy as np
import pytest

from sci_diffusion.cli import main
from sci_diffusion_medical.data.phantom import make_head_phantom, write_phantom_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def head_2mm():
    """One subject at the default 2 mm: (mr, ct, mask, labels, affine)."""
    return make_head_phantom(np.random.default_rng(0), spacing_mm=2.0)


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Two subjects at 4 mm (48 x 56 x 48) in the SynthRAD layout; treat as read-only."""
    root = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(root, subjects=2, spacing_mm=4.0, seed=0)
    return root


@pytest.fixture(scope="session")
def subject(phantom_dir) -> dict[str, Path]:
    """The first subject of `phantom_dir` (1BA001): its {"mr", "ct", "mask", "labels"} files; treat as read-only."""
    return {name: phantom_dir / "1BA001" / f"{name}.nii.gz" for name in ("mr", "ct", "mask", "labels")}


def run_expecting_error(argv, capsys) -> str:
    """Run the CLI on ``argv``; it must exit 2 with one line on stderr, ``sci-diffusion: error: ...``, returned."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and err.startswith("sci-diffusion: error: ")
    return err


def assert_one_sentence_naming(err: Exception, path) -> None:
    """The error is one line, one sentence, and names the file."""
    message = str(err)
    assert str(path) in message
    assert "\n" not in message
    assert message.endswith(".")


# ----- tiny trained models (Medical I): one LightningCLI fit each, a few steps, 8 x 16 channels -----
TINY_FIT = [
    "--data.val_subjects=1", "--data.crop_size=[16,16]", "--data.batch_size=4",
    "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
    "--trainer.enable_model_summary=false", "--trainer.enable_progress_bar=false",
]


def tiny_fit(config: str, root: Path, out: Path, extra: list[str], base: list[str] = TINY_FIT) -> Path:
    """``sci-diffusion fit --config configs/medical/<config>`` on ``root`` with ``base`` and ``extra`` flags, writing
    to ``out``; its ``last.ckpt``."""
    assert main(["fit", "--config", str(REPO / "configs" / "medical" / config), f"--data.root={root}",
                 f"--trainer.logger.init_args.save_dir={out}", f"--trainer.default_root_dir={out}", *base, *extra]) == 0
    return next(out.rglob("last.ckpt"))


@pytest.fixture(scope="session")
def diffusion_ckpt(phantom_dir, tmp_path_factory) -> Path:
    """A 2-step MRItoCTDiffusion checkpoint (channels 8, 16, 16) fitted on `phantom_dir` through the CLI."""
    return tiny_fit("mri2ct_phantom.yaml", phantom_dir, tmp_path_factory.mktemp("fit_diffusion"), [
        "--model.channels=[8,16,16]", "--model.attention_levels=[false,false,true]", "--model.num_head_channels=8",
        "--model.norm_num_groups=8", "--model.val_slices=2", "--model.val_steps=1"])


@pytest.fixture(scope="session")
def regression_ckpt(phantom_dir, tmp_path_factory) -> Path:
    """A 2-step MRItoCTRegression checkpoint (channels 8, 16) fitted on `phantom_dir` through the CLI."""
    return tiny_fit("mri2ct_regression.yaml", phantom_dir, tmp_path_factory.mktemp("fit_regression"), [
        "--model.channels=[8,16]", "--model.num_res_units=1"])


@pytest.fixture(scope="session")
def residual_ckpt(phantom_dir, regression_ckpt, tmp_path_factory) -> Path:
    """A 2-step MRItoCTResidualDiffusion checkpoint on top of `regression_ckpt`, with MR augmentation."""
    return tiny_fit("mri2ct_residual.yaml", phantom_dir, tmp_path_factory.mktemp("fit_residual"), [
        f"--model.regression_ckpt={regression_ckpt}",
        "--model.channels=[8,16,16]", "--model.attention_levels=[false,false,true]", "--model.num_head_channels=8",
        "--model.norm_num_groups=8", "--model.val_slices=2", "--model.val_steps=1", "--data.mr_augmentation=0.5"])
