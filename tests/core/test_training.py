"""The Lightning plumbing: a tiny fit lowers the loss, writes its records, and resumes."""
import csv

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

import sci_diffusion
from sci_diffusion.checkpoints import load_module
from sci_diffusion.toy import MixtureDataModule, MixtureDiffusion


def make_trainer(tmp_path, epochs):
    return L.Trainer(max_epochs=epochs, logger=CSVLogger(tmp_path, name="gmm", version=0), log_every_n_steps=5,
                     callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
                     enable_progress_bar=False, enable_model_summary=False)


def read_losses(tmp_path):
    with open(tmp_path / "gmm" / "version_0" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")], rows


def test_tiny_fit_lowers_the_loss_writes_records_and_resumes(tmp_path):
    L.seed_everything(0)
    data = MixtureDataModule(num_train=4096, batch_size=128)
    model = MixtureDiffusion(hidden=64, lr=3e-3, ema_decay=0.9, val_steps=10, val_num=500)
    make_trainer(tmp_path, 3).fit(model, data)
    losses, rows = read_losses(tmp_path)
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    assert any(r.get("val/sliced_w2") for r in rows)  # periodic sampling at validation
    assert (tmp_path / "gmm" / "version_0" / "loss_curve.png").stat().st_size > 1000

    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    meta = ckpt["sci_diffusion"]
    assert meta["version"] == sci_diffusion.__version__ and meta["domain"] == "gmm"
    assert meta["config"]["hidden"] == 64 and meta["data_config"]["num_train"] == 4096
    assert "current_model_state" in ckpt  # EMA: state_dict holds the average, this the raw weights

    # resume: the global step continues from the checkpoint rather than restarting
    resumed = MixtureDiffusion(hidden=64, lr=3e-3, ema_decay=0.9, val_steps=10, val_num=500)
    trainer = make_trainer(tmp_path, 4)
    trainer.fit(resumed, data, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert trainer.global_step == 4 * 32

    # the checkpoint rebuilds the EMA model for sampling
    module = load_module(tmp_path / "ckpt" / "last.ckpt", domain="gmm")
    torch.testing.assert_close(module.state_dict()["net.mlp.0.weight"],
                               torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["state_dict"]["net.mlp.0.weight"])


def test_a_run_stopped_between_saves_still_leaves_its_last_step(tmp_path):
    """max_steps (or max_time) between two ModelCheckpoint saves: last.ckpt holds the final step."""
    L.seed_everything(0)
    model = MixtureDiffusion(hidden=32, lr=3e-3, ema_decay=0.9, val_steps=5, val_num=100)
    trainer = L.Trainer(max_steps=20, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=16)])
    trainer.fit(model, MixtureDataModule(num_train=4096, batch_size=128))  # saves at step 16 only
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 20
    # saved before the average replaced the raw weights: both kinds are in it, and they differ
    averaged, raw = ckpt["state_dict"]["net.mlp.0.weight"], ckpt["current_model_state"]["net.mlp.0.weight"]
    torch.testing.assert_close(averaged, model.state_dict()["net.mlp.0.weight"])
    assert not torch.allclose(averaged, raw)


def test_a_run_that_saved_nothing_before_its_end_leaves_one_last_checkpoint_with_raw_weights(tmp_path):
    """Lightning's own end-of-training "last" would add last-v1.ckpt (the newest, so what
    --ckpt_path last resumes) holding the EMA average as the weights to resume from."""
    L.seed_everything(0)
    model = MixtureDiffusion(hidden=32, lr=3e-3, ema_decay=0.9, val_steps=5, val_num=100)
    trainer = L.Trainer(max_steps=12, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0,
                        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1000)])
    trainer.fit(model, MixtureDataModule(num_train=4096, batch_size=128))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.ckpt"]
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 12
    assert not torch.allclose(ckpt["state_dict"]["net.mlp.0.weight"], ckpt["current_model_state"]["net.mlp.0.weight"])


def test_trained_model_samples_close_to_the_mixture(tmp_path):
    L.seed_everything(0)
    model = MixtureDiffusion(hidden=128, lr=2e-3, ema_decay=0.95, val_steps=20, val_num=2000)
    make_trainer(tmp_path, 12).fit(model, MixtureDataModule(num_train=16384, batch_size=256))
    model.eval()
    # an untrained network scores ~2e4 on this metric (its eps blows up at t = 1); exact samples ~0.03
    assert model.validation_metrics()["sliced_w2"] < 0.3


def test_ema_decay_ramps_up_so_early_weights_fade_quickly():
    from sci_diffusion.callbacks import ema_with_warmup

    avg = ema_with_warmup(0.999)
    ema = [torch.zeros(1), torch.zeros(2, 2)]
    for n in range(200):  # the parameters jump to 1 after the first step and stay there
        avg(ema, [torch.ones(1), torch.ones(2, 2)], torch.tensor(n))
    # a fixed 0.999 decay would still hold 0.999**200 = 82 % of the initial 0; the ramp holds < 6 %
    assert float(ema[0]) > 0.94 and torch.equal(ema[1], torch.full((2, 2), float(ema[0])))
    late = [torch.zeros(1)]
    avg(late, [torch.ones(1)], torch.tensor(10**7))
    assert float(late[0]) == pytest.approx(0.001, rel=1e-4)
    for n in range(3):  # the formula written out: d = min(0.999, (1 + n) / (10 + n)), ema += (p - ema)(1 - d)
        before, param = torch.rand(5, generator=torch.Generator().manual_seed(n)), torch.rand(5)
        after = [before.clone()]
        avg(after, [param], torch.tensor(n))
        d = min(0.999, (1 + n) / (10 + n))
        torch.testing.assert_close(after[0], before * d + param * (1 - d))


def test_ema_keeps_moving_when_the_weights_are_bfloat16():
    """In bfloat16, 1 - 0.999 is 0: the decay must be computed in float32 or the average freezes."""
    from sci_diffusion.callbacks import ema_with_warmup

    avg = ema_with_warmup(0.999)
    ema = [torch.ones(1, dtype=torch.bfloat16)]
    avg(ema, [torch.full((1,), 10.0, dtype=torch.bfloat16)], torch.tensor(10**6))
    assert ema[0].dtype == torch.bfloat16
    assert float(ema[0]) > 1.0  # 1 + 0.001 * 9 = 1.009, which bfloat16 holds as 1.0078


def test_a_cpu_time_budget_stops_training_and_counts_earlier_legs_on_resume(tmp_path, monkeypatch):
    """The budget reads the process's CPU clock; a fake clock that advances 60 s per call makes
    the run stop after a known number of steps, and a resumed run starts from what was spent."""
    import itertools

    import sci_diffusion.callbacks as callbacks_module
    from sci_diffusion.callbacks import CpuTimeBudget

    clock = itertools.count(0.0, 60.0)
    monkeypatch.setattr(callbacks_module.time, "process_time", lambda: next(clock))
    L.seed_everything(0)
    budget = CpuTimeBudget(hours=0.1)  # 360 s of fake CPU time
    trainer = L.Trainer(max_steps=1000, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[budget, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
                        limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(MixtureDiffusion(hidden=16, ema_decay=0, val_num=10), MixtureDataModule(num_train=4096, batch_size=128))
    first_leg = trainer.global_step
    assert 3 <= first_leg <= 8  # stopped after about 360 s / 60 s per batch, far before max_steps
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]["CpuTimeBudget"]
    assert saved["cpu_seconds"] >= 360

    resumed_budget = CpuTimeBudget(hours=0.2)
    trainer = L.Trainer(max_steps=1000, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[resumed_budget], limit_val_batches=0, default_root_dir=tmp_path / "leg2")
    trainer.fit(MixtureDiffusion(hidden=16, ema_decay=0, val_num=10), MixtureDataModule(num_train=4096, batch_size=128),
                ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    # the second leg has only the remaining ~360 s: about as many steps again, not twice as many
    assert trainer.global_step - first_leg <= first_leg + 2
    assert resumed_budget.spent_seconds() >= 720


def test_a_cpu_time_budget_saves_a_checkpoint_at_each_mark_once(tmp_path, monkeypatch):
    """With ``save_at``, the first batch past each CPU-hour mark writes ``cpu_<h>h.ckpt``; a
    resumed leg that starts past a mark does not write it again."""
    import itertools

    import sci_diffusion.callbacks as callbacks_module
    from sci_diffusion.callbacks import CpuTimeBudget

    clock = itertools.count(0.0, 60.0)
    monkeypatch.setattr(callbacks_module.time, "process_time", lambda: next(clock))
    L.seed_everything(0)
    trainer = L.Trainer(max_steps=1000, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[CpuTimeBudget(hours=0.1, save_at=[0.05, 0.1]),
                                   ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
                        limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(MixtureDiffusion(hidden=16, ema_decay=0, val_num=10), MixtureDataModule(num_train=4096, batch_size=128))
    half = torch.load(tmp_path / "ckpt" / "cpu_0.05h.ckpt", weights_only=False)
    full = torch.load(tmp_path / "ckpt" / "cpu_0.1h.ckpt", weights_only=False)
    assert 180 <= half["callbacks"]["CpuTimeBudget"]["cpu_seconds"] < 360 <= full["callbacks"]["CpuTimeBudget"]["cpu_seconds"]
    assert half["global_step"] < full["global_step"] == trainer.global_step
    (tmp_path / "ckpt" / "cpu_0.05h.ckpt").unlink()

    resumed = CpuTimeBudget(hours=0.2, save_at=[0.05, 0.2])
    trainer = L.Trainer(max_steps=1000, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[resumed, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
                        limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(MixtureDiffusion(hidden=16, ema_decay=0, val_num=10), MixtureDataModule(num_train=4096, batch_size=128),
                ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert (tmp_path / "ckpt" / "cpu_0.2h.ckpt").is_file()
    assert not (tmp_path / "ckpt" / "cpu_0.05h.ckpt").exists()  # passed in the first leg


def test_a_warm_started_cpu_time_budget_counts_the_hours_behind_its_weights(tmp_path, monkeypatch):
    """``spent_hours`` (a warm start from a slim export): the run stops after the remaining budget, not the whole,
    saves only the marks past it, and its checkpoint holds the total, so a later leg goes on from there."""
    import itertools

    import sci_diffusion.callbacks as callbacks_module
    from sci_diffusion.callbacks import CpuTimeBudget

    clock = itertools.count(0.0, 60.0)
    monkeypatch.setattr(callbacks_module.time, "process_time", lambda: next(clock))
    L.seed_everything(0)
    budget = CpuTimeBudget(hours=0.2, save_at=[0.05, 0.15], spent_hours=0.1)  # 360 s of 720 s left
    assert budget.save_at == [0.15]
    trainer = L.Trainer(max_steps=1000, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[budget, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
                        limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(MixtureDiffusion(hidden=16, ema_decay=0, val_num=10), MixtureDataModule(num_train=4096, batch_size=128))
    assert 3 <= trainer.global_step <= 8  # about 360 s / 60 s per batch: the budget's remainder only
    assert (tmp_path / "ckpt" / "cpu_0.15h.ckpt").is_file() and not (tmp_path / "ckpt" / "cpu_0.05h.ckpt").exists()
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]["CpuTimeBudget"]
    assert saved["cpu_seconds"] >= 720
    from sci_diffusion.checkpoints import export_for_inference  # the slim copy records where the clock stood

    slim = export_for_inference(tmp_path / "ckpt" / "last.ckpt", tmp_path / "slim.ckpt")
    assert torch.load(slim, weights_only=False)["sci_diffusion"]["cpu_hours"] == round(saved["cpu_seconds"] / 3600, 4)
    with pytest.raises(ValueError, match="already spent"):
        CpuTimeBudget(hours=1.0, spent_hours=1.0)


def test_a_cpu_time_budget_refuses_a_mark_past_its_budget():
    from sci_diffusion.callbacks import CpuTimeBudget

    with pytest.raises(ValueError, match="mark"):
        CpuTimeBudget(hours=1.0, save_at=[0.5, 2.0])


def test_a_cpu_time_budget_must_be_positive():
    from sci_diffusion.callbacks import CpuTimeBudget

    with pytest.raises(ValueError, match="positive"):
        CpuTimeBudget(hours=0)


def test_periodic_sampling_at_validation_uses_the_ema_weights(tmp_path):
    """The sampled metrics must score the averaged model that ships, not the raw training weights."""

    class Probe(MixtureDiffusion):
        seen: list = []

        def validation_metrics(self):
            Probe.seen.append(self.net.mlp[0].weight.detach().clone())
            return {"probe": 0.0}

    L.seed_everything(0)
    model = Probe(hidden=16, lr=3e-3, ema_decay=0.9, val_num=10)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])
    trainer.fit(model, MixtureDataModule(num_train=2048, batch_size=128))
    raw = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["current_model_state"]["net.mlp.0.weight"]
    averaged = model.net.mlp[0].weight.detach()  # WeightAveraging leaves the average in the module at the end
    assert not torch.allclose(averaged, raw)
    torch.testing.assert_close(Probe.seen[-1], averaged)


def test_known_entries_reach_the_network_clean_and_stay_out_of_the_loss():
    """DiffusionBatch.known: the network sees x0 there at every noise level, and whatever it predicts
    there does not change the loss (a conformer model's given atom types)."""
    from sci_diffusion.module import DiffusionBatch
    from sci_diffusion.state_spaces import EuclideanSpace

    model = MixtureDiffusion(hidden=8, val_num=0)
    seen = []

    def network(x_t, t, cond=None, context=None):
        seen.append(x_t.clone())
        return out.expand_as(x_t)

    model.forward = network
    x0 = torch.randn(64, 2)
    known = torch.tensor([[0.0, 1.0]])
    out = torch.zeros(1, 2)
    loss = model.loss_fn(model, DiffusionBatch(x0, EuclideanSpace(), known=known), torch.Generator().manual_seed(0))
    assert torch.equal(seen[-1][:, 1], x0[:, 1]) and not torch.equal(seen[-1][:, 0], x0[:, 0])
    out = torch.tensor([[0.0, 1e3]])  # a wild prediction in the known column only
    assert model.loss_fn(model, DiffusionBatch(x0, EuclideanSpace(), known=known),
                         torch.Generator().manual_seed(0)) == loss


def test_a_cpu_time_cooldown_scales_the_rate_linearly_to_zero_between_its_marks(tmp_path, monkeypatch):
    """A fake CPU clock (60 s per read): the optimiser's rate is the warm-up's until the cooldown starts, then the
    warm-up's times a factor falling linearly with CPU time, to zero at the end; the factor is read from the
    budget's clock, so a broken cooldown (no scaling, the wrong sign, step-counted) turns this red."""
    import itertools

    import sci_diffusion.callbacks as callbacks_module
    from sci_diffusion.callbacks import CpuTimeBudget, CpuTimeCooldown

    clock = itertools.count(0.0, 60.0)
    monkeypatch.setattr(callbacks_module.time, "process_time", lambda: next(clock))
    seen = []

    class RecordRate(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append((budget.spent_seconds(), optimizer.param_groups[0]["lr"]))

    L.seed_everything(0)
    budget = CpuTimeBudget(hours=1.0)
    cooldown = CpuTimeCooldown(start_hours=0.5, end_hours=1.0)
    trainer = L.Trainer(max_steps=1000, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[budget, cooldown, RecordRate()], limit_val_batches=0, default_root_dir=tmp_path)
    module = MixtureDiffusion(hidden=16, ema_decay=0, val_num=10, lr=1e-3, lr_warmup_steps=3)
    trainer.fit(module, MixtureDataModule(num_train=8192, batch_size=128))
    rates = torch.tensor([lr for _, lr in seen])
    hours = torch.tensor([s for s, _ in seen]) / 3600.0
    assert torch.allclose(rates[:3], torch.tensor([1e-3 / 3, 2e-3 / 3, 1e-3]))  # the warm-up, untouched
    before = hours < 0.5
    assert torch.allclose(rates[3:][before[3:]], torch.tensor(1e-3))
    # after the start the rate is 1e-3 x (1 - (h - 0.5) / 0.5) at the CPU time the cooldown read at the batch's
    # start, one read of the fake clock (60 s) before this record's
    expected = 1e-3 * (1 - ((hours - 60 / 3600 - 0.5) / 0.5).clamp(0, 1))
    assert torch.allclose(rates[~before], expected[~before], atol=1e-7)
    assert rates[-1] < 0.1e-3 and (rates[~before].diff() <= 0).all()


def test_a_cpu_time_cooldown_needs_a_budget_and_an_order():
    from sci_diffusion.callbacks import CpuTimeCooldown

    with pytest.raises(ValueError, match="before it ends"):
        CpuTimeCooldown(start_hours=2.0, end_hours=1.0)
    trainer = L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[CpuTimeCooldown(0.0, 1.0)], limit_val_batches=0)
    with pytest.raises(ValueError, match="CpuTimeBudget"):
        trainer.fit(MixtureDiffusion(hidden=16, ema_decay=0, val_num=10), MixtureDataModule(num_train=512, batch_size=128))
