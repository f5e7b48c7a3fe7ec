"""The command line: help, domain discovery through entry points, LightningCLI fit, bad input."""
import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest

from sci_diffusion import cli, domains


def test_help_lists_core_and_domain_verbs(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for verb in ("fit", "demo", "sample", "evaluate"):
        assert verb in out


def test_both_domains_are_discovered_through_entry_points():
    found = domains.available_domains()
    assert {"molecules", "medical"} <= set(found)


def test_a_broken_domain_plugin_warns_instead_of_crashing(monkeypatch):
    broken = EntryPoint(name="broken", value="no_such_module_xyz:DOMAIN", group=domains.ENTRY_POINT_GROUP)
    monkeypatch.setattr(domains, "entry_points", lambda group: [broken])
    domains.available_domains.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="broken"):
            assert domains.available_domains() == {}
    finally:
        domains.available_domains.cache_clear()


def test_demo_writes_json_and_png_and_bad_sampler_exits_2(tmp_path, capsys):
    assert cli.main(["demo", "--num", "500", "--steps", "5", "--samplers", "ddim,dpmpp2m", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "demo.json").exists() and (tmp_path / "demo.png").stat().st_size > 1000
    assert cli.main(["demo", "--samplers", "euler_maruyama", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Unknown sampler 'euler_maruyama'" in err


def test_fit_from_yaml_config_accepts_dotted_overrides(tmp_path):
    """`sci-diffusion fit --config X --trainer.max_epochs 1` runs in a fresh process, as a user would."""
    cmd = [sys.executable, "-m", "sci_diffusion.cli", "fit", "--config", "configs/gmm/gmm_mlp.yaml",
           "--trainer.max_epochs", "1", "--data.init_args.num_train", "1024",
           "--trainer.logger.init_args.save_dir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          cwd=__import__("pathlib").Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = tmp_path / "gmm_mlp" / "version_0"
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and (run_dir / "loss_curve.png").exists()
    assert "max_epochs: 1" in (run_dir / "config.yaml").read_text()


def test_console_script_reports_a_missing_checkpoint_in_one_line(tmp_path):
    from sci_diffusion.checkpoints import load_module
    from sci_diffusion.errors import UserError

    with pytest.raises(UserError, match="does not exist"):
        load_module(tmp_path / "nope.ckpt")
    not_a_ckpt = tmp_path / "x.ckpt"
    not_a_ckpt.write_text("hello")
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        load_module(not_a_ckpt)


class NotWeights:
    """Any object a pickle can carry: weights_only loading must refuse it."""


def test_a_checkpoint_that_carries_python_objects_is_refused_in_one_sentence(tmp_path):
    import torch

    from sci_diffusion.checkpoints import read_checkpoint
    from sci_diffusion.errors import UserError

    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "sci_diffusion": {"domain": "molecules", "n": 1}}, plain)
    assert read_checkpoint(plain)["sci_diffusion"]["n"] == 1
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "sci_diffusion": {"domain": "molecules"}, "extra": NotWeights()}, hostile)
    with pytest.raises(UserError, match="will not unpickle"):
        read_checkpoint(hostile)


def test_fit_killed_mid_run_resumes_from_its_last_checkpoint_and_finishes_the_same_steps(tmp_path):
    """A real process killed with SIGKILL, then `fit ... --ckpt_path last`: it resumes (from the
    killed run's folder, not the new version's empty one) and ends at the same step as one run."""
    import os
    import signal
    import time
    from pathlib import Path

    repo = Path(__file__).parents[2]
    cmd = [sys.executable, "-m", "sci_diffusion.cli", "fit", "--config", "configs/gmm/gmm_mlp.yaml",
           "--trainer.max_steps", "400", "--trainer.max_epochs", "100", "--data.init_args.num_train", "2048",
           "--trainer.callbacks.init_args.every_n_train_steps", "20", "--trainer.val_check_interval", "1000",
           "--trainer.check_val_every_n_epoch", "null", "--trainer.logger.init_args.save_dir", str(tmp_path)]
    first = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_dir = tmp_path / "gmm_mlp" / "version_0" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not (killed_dir / "last.ckpt").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    import torch

    saved_step = torch.load(killed_dir / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < saved_step < 400  # killed mid-run, after a save
    done = subprocess.run(cmd + ["--ckpt_path", "last"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Restoring states from the checkpoint" in done.stderr + done.stdout
    resumed = tmp_path / "gmm_mlp" / "version_1" / "checkpoints" / "last.ckpt"
    assert torch.load(resumed, weights_only=True)["global_step"] == 400
    assert not list((tmp_path / "gmm_mlp").rglob("*.partial*"))
