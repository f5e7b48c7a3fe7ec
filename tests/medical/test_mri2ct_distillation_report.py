"""The medical distillation benchmark's verdict and its rounds' configs (benchmarks/mri2ct_distillation.py,
benchmarks/distillation_rounds.py): the last student is judged against the teacher at its reference steps on the
same subjects (MAE at most 2 HU worse, coverage within 3 points), and each round's config carries its teacher,
steps, budget, folders and the benchmark's overrides."""
import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
_spec = importlib.util.spec_from_file_location("mri2ct_distillation", ROOT / "benchmarks" / "mri2ct_distillation.py")
bench = sys.modules["mri2ct_distillation"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

SUBJECTS = [f"1AA{i:03d}" for i in range(1, 13)]


def row(model: str, steps: int, mae: list[float], coverage: float, test_set: str = "in-domain") -> dict:
    return {"test_set": test_set, "model": model, "steps": steps,
            "per_subject": {"mae_hu": dict(zip(SUBJECTS, mae)), "crps_hu": dict(zip(SUBJECTS, [0.8 * m for m in mae]))},
            "interval_coverage": {"mean": coverage}}


TEACHER = [140.0 + i for i in range(12)]


@pytest.mark.parametrize(("shift", "coverage", "mae_met", "coverage_met"), [
    (1.5, 0.91, True, True),     # 1.5 HU worse, 1 point more coverage: met
    (3.0, 0.90, False, True),    # 3 HU worse: the MAE half fails
    (-4.0, 0.86, True, False),   # better MAE, but 4 points less coverage
])
def test_the_last_student_is_judged_against_the_teacher_at_its_reference_steps(shift, coverage, mae_met, coverage_met):
    rows = [row("teacher", 2, [m + 30 for m in TEACHER], 0.70), row("teacher", 10, TEACHER, 0.90),
            row("student 4", 4, [m + 50 for m in TEACHER], 0.50),  # an earlier round: not the one judged
            row("student 2", 2, [m + shift for m in TEACHER], coverage)]
    v = bench.verdicts(rows, reference_steps=10)["in-domain"]
    assert v["student_steps"] == 2 and v["subjects"] == 12
    assert v["mae_difference_hu"] == pytest.approx(shift)
    assert v["coverage_difference"] == pytest.approx(coverage - 0.90)
    assert v["crps_difference_hu"] == pytest.approx(0.8 * shift)  # reported beside the target, not part of it
    assert (v["mae_met"], v["coverage_met"], v["met"]) == (mae_met, coverage_met, mae_met and coverage_met)


def test_subjects_are_paired_by_id_not_by_position():
    teacher = row("teacher", 10, TEACHER, 0.9)
    student = row("student 2", 2, [m + 1.0 + (0.2 if i % 2 else -0.2) for i, m in enumerate(TEACHER)], 0.9)
    student["per_subject"]["mae_hu"] = dict(reversed(list(student["per_subject"]["mae_hu"].items())))
    v = bench.verdicts([teacher, student], 10)["in-domain"]
    assert v["mae_difference_hu"] == pytest.approx(1.0)
    low, high = v["mae_difference_interval"]  # every subject 0.8 or 1.2 HU worse: paired, the interval is that narrow
    assert 0.8 <= low < 1.0 < high <= 1.2


def test_a_round_config_carries_its_teacher_steps_budget_folders_and_overrides(tmp_path):
    from distillation_rounds import round_config, student_steps

    assert student_steps(64, 3) == [32, 16, 8] and student_steps(8, 2) == [4, 2]  # each round halves its teacher's

    out = round_config(bench.CONFIG, tmp_path, 2, tmp_path / "student_4.ckpt", 2, 0.25,
                       {"model": {"regression_ckpt": "R.ckpt"}, "data": {"root": str(tmp_path / "phantoms")}})
    cfg = yaml.safe_load(out.read_text())
    model, callbacks = cfg["model"]["init_args"], {c["class_path"].rsplit(".", 1)[1]: c["init_args"]
                                                     for c in cfg["trainer"]["callbacks"]}
    assert (model["distill_from"], model["distill_steps"], model["regression_ckpt"]) == (
        str(tmp_path / "student_4.ckpt"), 2, "R.ckpt")
    assert cfg["data"]["init_args"]["root"] == str(tmp_path / "phantoms")
    assert callbacks["CpuTimeBudget"]["hours"] == 0.25
    assert callbacks["ModelCheckpoint"]["dirpath"] == str(tmp_path / "round_2" / "checkpoints")


def test_bad_arguments_are_refused_in_one_sentence(capsys):
    for argv, words in ((["--rounds", "0.5,0.5,0.5", "--teacher-steps", "6"], "cannot be halved 3 times"),
                        (["--test-sets", "elsewhere"], "--test-sets takes names from"),
                        (["--teacher", "no_such.ckpt"], "--teacher no_such.ckpt is not there"),
                        (["--rows", "teacher@10,student@3"], "--rows names student@3; this run's rows are")):
        with pytest.raises(SystemExit) as stop:
            bench.parse_args(argv)
        assert stop.value.code == 2 and words in capsys.readouterr().err
