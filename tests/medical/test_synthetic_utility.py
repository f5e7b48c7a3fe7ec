"""The utility study of issue 31 §2 (benchmarks/medical_synthetic_utility.py) without training anything: which
subjects each unit sees, the statistics and the targets, Dice per tissue, resuming, and the flags it refuses."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sci_diffusion_medical.models.tissue_segmentation import TissueSegmentation, dice_per_tissue

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
_spec = importlib.util.spec_from_file_location("medical_synthetic_utility", ROOT / "benchmarks" / "medical_synthetic_utility.py")
msu = sys.modules["medical_synthetic_utility"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(msu)


def fake_subjects(folder: Path, centre: str, count: int) -> Path:
    """``count`` SynthRAD-named subject folders holding one file each (the plan only links folders)."""
    for i in range(1, count + 1):
        (folder / f"1B{centre}{i:03d}").mkdir(parents=True)
        (folder / f"1B{centre}{i:03d}" / "mr.nii.gz").write_bytes(b"x")
    return folder


@pytest.fixture
def planned(tmp_path):
    """A study of n_real 2, 5 over two seeds, planned on a pool of 7 fake heads and 3 fake test heads."""
    args = msu.parse_args(["--work-dir", str(tmp_path / "work"), "--n-real", "2,5", "--seeds", "0,1",
                           "--pool-subjects", "7", "--test-subjects", "3"])
    pool, test = fake_subjects(tmp_path / "pool", "A", 7), fake_subjects(tmp_path / "test", "T", 3)
    return args, msu.plan_units(args, tmp_path / "work", pool, test), test


def flag_value(command: list[str], flag: str) -> str:
    return next(c.split("=", 1)[1] for c in command if c.startswith(flag + "="))


# ----- the split ---------------------------------------------------------------------------------------------
def test_no_test_head_reaches_any_training_set_and_each_generator_sees_only_its_arms_real_subjects(planned):
    args, units, test = planned
    test_ids = {f.name for f in test.iterdir()}
    pool_ids = [f"1BA{i:03d}" for i in range(1, 8)]
    assert len(units) == 2 * 2 * (3 + 1 + 6)  # seeds x n_real x (3 stages, 1 synthesis, 2 tasks x 3 arms)
    for unit in units.values():
        n, seed = unit.info["n_real"], unit.info["seed"]
        cell = unit.root.split("/")[-2]
        assert cell == f"n{n}_s{seed}"  # every unit works in its own cell's folders
        if "fit" in unit.command:
            assert flag_value(unit.command, "--data.root") == unit.root
            assert flag_value(unit.command, "--data.val_subjects") == "0"
        for folder in [unit.root, *unit.link]:
            assert not test_ids & {p.name for p in Path(folder).glob("*")}
        if unit.kind == "generator" or unit.info.get("arm") == "real":
            assert sorted(p.name for p in Path(unit.root).iterdir()) == msu.draw_real(pool_ids, n, seed)
        if unit.kind == "generator":  # the latent stage takes its own cell's autoencoders
            assert set(unit.checkpoint_flags.values()) <= {f"gen_{cell}_labels", f"gen_{cell}_images"}
        if unit.kind == "synthesize":
            assert unit.checkpoint_flags == {"--ckpt": f"gen_{cell}_latent"}
        if unit.info.get("arm") in ("synthetic", "real+synthetic"):
            assert unit.after == [f"synth_{cell}"]
            assert Path(unit.root).name == unit.info["arm"]
        if unit.info.get("arm") == "real+synthetic":
            assert [Path(p).relative_to(Path(unit.root).parent).as_posix() for p in unit.link] == ["real", "synthetic"]


def test_draws_are_nested_in_n_real_and_differ_between_seeds():
    pool = [f"1BA{i:03d}" for i in range(1, 21)]
    for seed in (0, 1, 2):
        assert set(msu.draw_real(pool, 2, seed)) < set(msu.draw_real(pool, 5, seed)) < set(msu.draw_real(pool, 10, seed))
    assert len({tuple(msu.draw_real(pool, 5, seed)) for seed in (0, 1, 2)}) == 3


# ----- statistics and targets -----------------------------------------------------------------------------------
def crossed_sample(rng, mean, seeds=4, subjects=12):
    """Seeds x test subjects: a shared subject difficulty, a seed effect and noise around ``mean``."""
    return (mean + rng.normal(0, 0.05, (1, subjects)) + rng.normal(0, 0.02, (seeds, 1))
            + rng.normal(0, 0.02, (seeds, subjects)))


def test_the_crossed_bootstrap_interval_covers_the_known_mean():
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(60):
        low, high = msu.crossed_bootstrap([crossed_sample(rng, 0.7)], np.mean, resamples=300, seed=1)
        covered += low <= 0.7 <= high
    assert covered >= 0.85 * 60
    low, high = msu.crossed_bootstrap([crossed_sample(rng, 0.7)], np.mean, resamples=300)
    assert high - low < 0.15  # an interval, not the whole line


def test_the_paired_test_finds_a_planted_improvement_and_not_a_null_one():
    rng = np.random.default_rng(1)
    base = crossed_sample(rng, 0.6)
    better = base + 0.03 + rng.normal(0, 0.01, base.shape)
    same = base + rng.normal(0, 0.01, base.shape)
    assert msu.paired_test(better, base, "greater") < 1e-3
    assert msu.paired_test(same, base, "greater") > 0.05
    assert msu.paired_test(base, base, "greater") == 1.0
    gain = msu.compare(better, base, resamples=300, scale=100)
    assert gain["difference"] == pytest.approx(100 * (better - base).mean())
    assert gain["interval95"][0] > 0 and gain["p_greater"] < 1e-3 and gain["p_less"] > 0.5


def comparison(difference, interval, p_greater, ratio=None):
    return {"difference": difference, "interval95": interval, "p_greater": p_greater, "p_less": 1 - p_greater,
            **({"share_of_real": {"ratio": ratio, "interval95": [ratio - 0.1, ratio + 0.1]}} if ratio else {})}


def test_the_targets_follow_the_issues_rules():
    c = {"segmentation/n2/real+synthetic - real": comparison(4.0, [1.0, 7.0], 0.01),
         "segmentation/n5/real+synthetic - real": comparison(4.0, [-0.5, 8.0], 0.01),  # interval reaches 0
         "segmentation/n10/synthetic - real": comparison(-10.0, [-15, -5], 0.99, ratio=0.82),
         "mri2ct/n2/real+synthetic - real": comparison(-3.0, [-8.0, 2.0], 0.9),
         "mri2ct/n5/real+synthetic - real": comparison(10.0, [5.0, 15.0], 0.001)}  # worse; n10 not measured
    t = msu.targets(c)
    assert [t[k]["met"] for k in ("dice_gain_n2", "dice_gain_n5", "synthetic_share_n10", "mri2ct_not_worse_n2",
                                  "mri2ct_not_worse_n5", "mri2ct_not_worse_n10")] == [True, False, True, True, False, None]
    c["segmentation/n2/real+synthetic - real"] = comparison(2.5, [1.0, 4.0], 0.01)  # under 3 points
    c["segmentation/n10/synthetic - real"] = comparison(-30.0, [-35, -25], 0.99, ratio=0.7)
    t = msu.targets(c)
    assert (t["dice_gain_n2"]["met"], t["synthetic_share_n10"]["met"]) == (False, False)
    assert msu.verdict(None) == "not measured"


def fabricated_results(gain: float) -> list[dict]:
    """Downstream unit records of 3 seeds x 12 test heads: synthetic data adds ``gain`` Dice at every n_real."""
    rng, out = np.random.default_rng(2), []
    for n in (2, 5, 10):
        real = crossed_sample(rng, 0.5 + 0.02 * n, seeds=3)
        mae = 150 + rng.normal(0, 5, real.shape)
        arms = {"real": (real, mae), "real+synthetic": (real + gain, mae + 1.0),
                "synthetic": (0.85 * real, mae + 40)}
        for arm, (dice, hu) in arms.items():
            for seed in range(3):
                out.append({"task": "segmentation", "n_real": n, "arm": arm, "seed": seed, "subjects": [],
                            "rows": [{"subject": f"1BT{j + 1:03d}", "mean_dice": float(dice[seed, j]), "dice": {}}
                                     for j in range(12)]})
                out.append({"task": "mri2ct", "n_real": n, "arm": arm, "seed": seed, "subjects": [],
                            "rows": [{"subject": f"1BT{j + 1:03d}", "mae_hu": float(hu[seed, j])} for j in range(12)]})
    return out


def test_the_report_reads_a_planted_gain_from_unit_records():
    args = msu.parse_args(["--bootstrap", "200"])
    subjects = [f"1BT{j:03d}" for j in range(1, 13)]
    cells, comparisons = msu.summarise(fabricated_results(0.05), args, subjects)
    assert cells["segmentation/n2/real"]["seeds"] == 3
    t = msu.targets(comparisons)
    assert t["dice_gain_n2"]["value"] == pytest.approx(5.0) and t["dice_gain_n2"]["met"]
    assert t["synthetic_share_n10"]["value"] == pytest.approx(0.85) and t["synthetic_share_n10"]["met"]
    assert not any(t[f"mri2ct_not_worse_n{n}"]["met"] for n in (2, 5, 10))  # 1 HU worse on every pair
    _, comparisons = msu.summarise(fabricated_results(0.0), args, subjects)
    assert not msu.targets(comparisons)["dice_gain_n2"]["met"]


def test_the_page_and_the_readme_row_are_written_from_the_report():
    args = msu.parse_args(["--bootstrap", "200"])
    cells, comparisons = msu.summarise(fabricated_results(0.05), args, [f"1BT{j:03d}" for j in range(1, 13)])
    report = {"settings": {"n_real": args.n_real, "seeds": args.seeds, "pool_subjects": 20, "test_subjects": 12,
                           "synthetic": 10, "generator_cpu_hours": args.generator_cpu_hours, "downstream_cpu_hours": 0.05,
                           "steps": 50, "sampler": "ddpm"},
              "protocol": {"as_the_issue_asks": True}, "units_done": 90, "units_planned": 90, "targets_met": "2 of 6",
              "targets": msu.targets(comparisons), "cells": cells, "comparisons": comparisons, "dice_per_tissue": {}}
    row = msu.readme_row(report)
    assert row.startswith(f"| {msu.README_CELL} | **2 of 6 targets met**") and row.count(" | ") == 4
    assert f"n 2: {cells['segmentation/n2/real']['mean']:.3f} / " in row
    assert any(line.startswith(f"| {msu.README_CELL} |") for line in (ROOT / "README.md").read_text().splitlines())
    page = (ROOT / "docs" / "results" / "medical_synthetic_utility.md").read_text()
    assert f"<!-- results:{msu.NAME} -->" in page and f"<!-- /results:{msu.NAME} -->" in page
    text = msu.markdown(report)
    assert "| segmentation/n2/real+synthetic - real | 5.00 |" in text and "| met |" in text


# ----- Dice per tissue and the segmentation model ------------------------------------------------------------
def test_dice_per_tissue_on_a_hand_made_case():
    reference = torch.zeros(4, 4, 4, dtype=torch.long)
    reference[0, :2, :4] = 1  # tissue 1: 8 voxels
    reference[3, 0, :2] = 2   # tissue 2: 2 voxels; tissue 3 absent
    predicted = torch.zeros_like(reference)
    predicted[0, 0, :4] = 1   # 4 of tissue 1's voxels
    predicted[1, 0, :2] = 1   # 2 false positives
    predicted[3, 0, :2] = 2   # tissue 2 exact
    predicted[2, 2, 2] = 3    # tissue 3 predicted where the reference has none
    scores = dice_per_tissue(predicted, reference, classes=4)
    assert scores[:2] == pytest.approx([2 * 4 / (6 + 8), 1.0])
    assert np.isnan(scores[2])  # absent from the reference: left out of the mean, not scored 0
    with pytest.raises(ValueError, match="different shapes"):
        dice_per_tissue(predicted, reference[:2], classes=4)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a training step outside a Trainer
def test_the_segmentation_model_segments_a_head_of_any_size():
    model = TissueSegmentation(classes=4, channels=(4, 8), roi=16).eval()
    labels = model.segment(torch.randn(1, 1, 21, 18, 9))
    assert labels.shape == (1, 21, 18, 9) and labels.dtype == torch.long and int(labels.max()) < 4
    batch = {"image": torch.randn(2, 2, 16, 16, 16), "labels": torch.randint(0, 4, (2, 16, 16, 16))}
    assert torch.isfinite(model.training_step(batch, 0))


# ----- resuming ----------------------------------------------------------------------------------------------
def plan_file(work: Path, units: list, deadline=None) -> None:
    work.mkdir(parents=True, exist_ok=True)
    (work / "plan.json").write_text(json.dumps({"deadline": deadline, "units": {u.name: msu.asdict(u) for u in units}}))


def test_finished_units_are_skipped_and_the_rest_resume_in_order(planned, tmp_path):
    args, units, _ = planned
    work = tmp_path / "work"
    chosen, _ = msu.select_units(units, work, "all")
    assert len(chosen) == len(units)
    (work / "units").mkdir(parents=True)
    for name in ("gen_n2_s0_labels", "gen_n2_s0_images"):
        (work / "units" / f"{name}.json").write_text(json.dumps({"checkpoint": f"/ckpt/{name}.ckpt"}))
    chosen, waiting = msu.select_units(units, work, "generators")
    names = [u.name for u in chosen]
    assert "gen_n2_s0_labels" not in names and "gen_n2_s0_latent" in names and not waiting
    chosen, waiting = msu.select_units(units, work, "downstream")  # synthesis not done: only the real arms run
    assert {u.info["arm"] for u in chosen} == {"real"} and "segmentation_n2_s0_synthetic" in waiting
    latent = msu.resolved_command(units["gen_n2_s0_latent"], work)
    assert "--model.init_args.label_autoencoder=/ckpt/gen_n2_s0_labels.ckpt" in latent
    assert "--ckpt_path=last" not in latent
    (work / "runs" / "gen_n2_s0_latent" / "version_0" / "checkpoints").mkdir(parents=True)
    (work / "runs" / "gen_n2_s0_latent" / "version_0" / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert msu.resolved_command(units["gen_n2_s0_latent"], work)[-1] == "--ckpt_path=last"  # a killed fit resumes


def test_a_unit_runs_once_writes_its_record_and_starts_nothing_after_the_deadline(tmp_path):
    work, out = tmp_path / "work", tmp_path / "written"
    touch = [sys.executable, "-c", f"import pathlib; pathlib.Path({str(out)!r}).mkdir()"]  # fails if run twice
    unit = msu.Unit("synth_n2_s0", "synthesize", touch, root=str(tmp_path / "synthetic"), info={"n_real": 2, "seed": 0})
    late = msu.Unit("synth_n5_s0", "synthesize", touch, root=str(tmp_path / "synthetic"), info={})
    plan_file(work, [unit])
    assert msu.run_unit(work, unit.name) == 0 and out.is_dir()
    record = json.loads((work / "units" / "synth_n2_s0.json").read_text())
    assert (record["unit"], record["n_real"], record["seed"]) == ("synth_n2_s0", 2, 0) and record["cpu_seconds"] > 0
    assert msu.run_unit(work, unit.name) == 0  # done already: the command does not run again (it would fail)
    plan_file(work, [late], deadline=0.0)
    assert msu.run_unit(work, late.name) == 0 and not (work / "units" / "synth_n5_s0.json").exists()


# ----- flags -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, says", [
    (["--n-real", "0,2"], "--n-real"),
    (["--n-real", "two"], "--n-real"),
    (["--n-real", "2,25"], "--pool-subjects"),  # the default pool holds 20
    (["--generator-cpu-hours", "0.1,0.2"], "--generator-cpu-hours"),
    (["--generator-cpu-hours", "0"], "--generator-cpu-hours"),
    (["--jobs", "0"], "--jobs"),
    (["--test-subjects", "0"], "--test-subjects"),
    (["--budget-minutes", "-5"], "--budget-minutes"),
    (["--phase", "train"], "--phase"),
])
def test_bad_flags_are_one_sentence_and_exit_2(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        msu.parse_args(argv)  # main() checks the flags here first; parse_args alone never starts a study
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2
    assert "\n" not in err and err.endswith(".") and says in err


def test_a_work_dir_made_for_other_counts_is_refused_in_one_sentence(tmp_path, capsys):
    for name, count in (("real_pool", 20), ("real_test", 3)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "dataset.json").write_text(json.dumps({"subjects": [f"s{i}" for i in range(count)]}))
    with pytest.raises(SystemExit) as exit_:
        msu.write_real_sets(msu.parse_args(["--test-subjects", "12"]), tmp_path)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err and "holds 3 heads, not the 12" in err
