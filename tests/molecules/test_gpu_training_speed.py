"""The GPU training-speed script (benchmarks/gpu_training_speed.py), run on the CPU for a few steps: its figures
follow from the steps it trained, its verdict from its rate, its optimiser is the fused form of the module's own,
and the checkpoint it leaves is the default recipe's model, loadable as any other."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from sci_diffusion.checkpoints import load_module
from sci_diffusion_molecules.data.bond_datamodule import QM9BondDataModule
from sci_diffusion_molecules.models.bond_diffusion import BondMoleculeDiffusion

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
_spec = importlib.util.spec_from_file_location("gpu_training_speed", ROOT / "benchmarks" / "gpu_training_speed.py")
speed = sys.modules["gpu_training_speed"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(speed)

STEPS, BATCH, LIMIT, WARMUP = 5, 8, 200, 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One CPU run of the script at tiny size: its JSON record and its output folder."""
    out = tmp_path_factory.mktemp("gpu_speed")
    assert speed.main(["--device", "cpu", "--precision", "32-true", "--minutes", "10", "--batch-size", str(BATCH),
                       "--max-steps", str(STEPS), "--limit", str(LIMIT), "--warmup-steps", str(WARMUP),
                       "--log-every", "2", "--out", str(out)]) == 0
    return json.loads((out / "gpu_training_speed.json").read_text()), out


def test_the_rates_are_the_molecules_trained_over_the_split_and_the_minutes(run):
    r, _ = run
    assert (r["steps"], r["samples"], r["global_step"], r["train_size"]) == (STEPS, STEPS * BATCH, STEPS, LIMIT)
    minutes = r["train_seconds"] / 60
    assert r["epochs"] == pytest.approx(STEPS * BATCH / LIMIT)
    assert r["epochs_per_minute"] == pytest.approx(STEPS * BATCH / LIMIT / minutes)
    assert r["steps_per_second"] == pytest.approx(STEPS / r["train_seconds"])
    assert r["samples_per_second"] == pytest.approx(STEPS * BATCH / r["train_seconds"])
    steady = r["steady"]
    assert steady["after_steps"] == WARMUP and 0 < steady["seconds"] < r["train_seconds"]
    assert steady["epochs_per_minute"] == pytest.approx((STEPS - WARMUP) * BATCH / LIMIT / (steady["seconds"] / 60))
    v = r["verdict"]
    assert v["epochs_in_target_minutes"] == pytest.approx(r["epochs"] + steady["epochs_per_minute"] * (15 - minutes))
    assert v["meets_target"] is (v["epochs_in_target_minutes"] >= 100) and v["projected"]
    assert [step for step, _ in r["losses"]] == [1, 2, 4] and all(math.isfinite(loss) for _, loss in r["losses"])
    assert r["device"] == "cpu" and r["gpu_memory"] is None and r["machine"]["cores"] and r["command"]


def test_the_verdict_is_the_epochs_trained_plus_the_steady_rate_over_the_minutes_left():
    assert speed.verdict(100.0, 15.0, None)["meets_target"] and not speed.verdict(99.9, 15.0, None)["projected"]
    assert not speed.verdict(99.9, 15.0, 50.0)["meets_target"]
    assert speed.verdict(40.0, 6.0, 10.0)["epochs_in_target_minutes"] == pytest.approx(130.0)
    assert not speed.verdict(40.0, 6.0, 6.6)["meets_target"]  # 99.4 epochs
    assert speed.verdict(30.0, 5.0, None)["epochs_in_target_minutes"] == pytest.approx(90.0)  # its own rate, 6/min
    assert speed.verdict(30.0, 5.0, None)["rate_used"] == "whole run"
    assert speed.epochs_per_minute(200_000, 100_000, 30.0) == pytest.approx(4.0)


def test_the_checkpoint_is_the_default_recipes_model_trained_with_the_fused_optimiser(run):
    r, out = run
    model = load_module(out / "last.ckpt", domain="molecules")
    assert isinstance(model, BondMoleculeDiffusion) and model.checkpoint_record["global_step"] == STEPS
    h = model.hparams
    assert (h.prediction, h.loss_weighting, h.loss_weight_gamma, h.hidden, h.layers) == ("x0", "clipped_snr", 100.0, 128, 6)
    data = QM9BondDataModule(limit=LIMIT)
    assert model.bond_counts == [float(c) for c in data.bond_class_counts()]
    checkpoint = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    assert all(group["fused"] for group in checkpoint["optimizer_states"][0]["param_groups"]) and r["fused_optimizer"]
    ema, raw = checkpoint["state_dict"], checkpoint["current_model_state"]  # the EMA weights sample, the raw resume
    assert all(torch.equal(model.state_dict()[k], ema[k]) for k in ema)
    assert any(not torch.equal(ema[k], raw[k]) for k in ema if ema[k].is_floating_point())
    assert r["checkpoint"]["file"] == "last.ckpt"
    assert "Verdict:" in (out / "gpu_training_speed.md").read_text()


def test_the_fused_optimiser_takes_the_same_step_as_the_modules_own():
    models = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = BondMoleculeDiffusion(hidden=16, layers=1, bond_prior="uniform", lr=1e-2, lr_warmup_steps=0)
        speed.tune_module(model, fused=fused)
        optimizer = model.configure_optimizers()
        for p in model.parameters():
            p.grad = torch.full_like(p, 0.3)
        optimizer.step()
        models.append(model)
    assert all(g["fused"] for g in optimizer.param_groups)
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_the_training_loader_gives_full_batches_only():
    data = QM9BondDataModule(batch_size=8, limit=20)
    speed.fast_train_loader(data, pin_memory=False)
    assert [batch.num_graphs for batch in data.train_dataloader()] == [8, 8]


def test_a_runs_json_comes_home_with_its_own_command_machine_and_date(run, tmp_path, monkeypatch):
    r, out = run
    pages = {}
    monkeypatch.setitem(speed.write_result.__globals__, "RESULTS", tmp_path)
    monkeypatch.setitem(speed.write_result.__globals__, "replace_results_block", lambda name, text: pages.update({name: text}))
    rows = {}
    monkeypatch.setattr(speed, "replace_readme_row", lambda cell, row: rows.update({cell: row}) or True)
    assert speed.main(["--from-json", str(out / "gpu_training_speed.json")]) == 0
    readme = (Path(speed.__file__).resolve().parents[1] / "README.md").read_text()
    assert f"| {speed.README_CELL} |" in readme  # the row the result replaces exists
    row = rows[speed.README_CELL]
    assert row.startswith(f"| {speed.README_CELL} | ") and f"{r['verdict']['epochs_in_target_minutes']:.1f} epochs" in row
    home = json.loads((tmp_path / "gpu_training_speed.json").read_text())
    assert home == r  # the run's figures, command, machine and date, unchanged
    assert pages["gpu_training_speed"].startswith(speed.render(r)) and r["command"] in pages["gpu_training_speed"]
