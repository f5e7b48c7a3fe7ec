"""`fit` under Lightning DDP on CPU: two processes (gloo), as a user launches them on one machine.
Each rank sees its half of the data (Lightning's distributed sampler), the validation metrics are
averaged over processes, and only rank zero writes: one run folder, one last checkpoint."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]


def fit(args, tmp_path):
    done = subprocess.run([sys.executable, "-m", "sci_diffusion.cli", "fit", *args, *DDP,
                           "--trainer.logger.init_args.save_dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize("config, extra, batches_per_rank", [
    ("configs/gmm/gmm_mlp.yaml", ["--trainer.max_epochs", "1", "--data.init_args.num_train", "2048"], 4),
    ("configs/molecules/qm9_edm_small.yaml",
     ["--trainer.max_epochs", "1", "--data.init_args.limit", "64", "--data.init_args.batch_size", "16",
      "--model.init_args.hidden", "16", "--model.init_args.layers", "2", "--model.init_args.val_molecules", "4",
      "--model.init_args.val_steps", "3", "--trainer.limit_val_batches", "2", "--trainer.val_check_interval", "1.0",
      "--trainer.check_val_every_n_epoch", "1", "--trainer.precision", "32-true"], 2),
    ("configs/medical/mri2ct_phantom.yaml",  # rank zero writes the phantoms (prepare_data), both read them
     ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--data.root", "{tmp}/phantom",
      "--data.phantom_subjects", "3", "--data.phantom_spacing_mm", "4.0", "--data.val_subjects", "1",
      "--data.crop_size", "[16,16]", "--data.batch_size", "4", "--model.channels", "[8,16,16]",
      "--model.attention_levels", "[false,false,true]", "--model.num_head_channels", "8", "--model.norm_num_groups", "8",
      "--model.val_slices", "2", "--model.val_steps", "1", "--trainer.limit_val_batches", "1",
      "--trainer.val_check_interval", "1.0", "--trainer.check_val_every_n_epoch", "1"], 3),
])
def test_fit_runs_under_ddp_with_two_cpu_processes(config, extra, batches_per_rank, tmp_path):
    fit(["--config", config, *[a.format(tmp=tmp_path) for a in extra]], tmp_path)
    runs = sorted(p for p in tmp_path.glob("*/version_*") if p.is_dir() and p.parent.name != "phantom")
    assert len(runs) == 1  # rank one wrote no run folder of its own
    last = list(runs[0].rglob("last*.ckpt"))
    assert [p.name for p in last] == ["last.ckpt"]
    ckpt = torch.load(last[0], weights_only=True)
    assert ckpt["global_step"] == batches_per_rank  # each rank stepped through its half of the data
    from sci_diffusion.checkpoints import load_module

    load_module(last[0])  # one valid checkpoint
    assert "val/loss" in (runs[0] / "metrics.csv").read_text()
