"""The recipe study's verdict compares arms at equal CPU time, and reports an arm trained on alone separately."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
_spec = importlib.util.spec_from_file_location("molecules_recipes", ROOT / "benchmarks" / "molecules_recipes.py")
recipes = sys.modules["molecules_recipes"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipes)


def row(arm: str, mark: float, stable: float, steps: int = 50) -> dict:
    return {"arm": arm, "mark_cpu_hours": mark, "steps": steps, "molecule_stability": stable, "molecules": 1000}


ROWS = [row("e", 1.0, 0.167), row("f", 1.0, 0.470), row("b", 0.5, 0.30), row("f", 0.5, 0.20), row("f", 2.0, 0.610)]


def test_the_comparison_is_at_the_last_mark_two_arms_reached():
    a, b, se = recipes.leader(ROWS, 50)
    assert (a["arm"], a["mark_cpu_hours"], b["arm"]) == ("f", 1.0, "e")
    assert abs(se - (0.47 * 0.53 / 1000 + 0.167 * 0.833 / 1000) ** 0.5) < 1e-12
    latest = recipes.leader(ROWS, 50, contested=False)
    assert (latest[0]["arm"], latest[0]["mark_cpu_hours"], latest[1]) == ("f", 2.0, None)


def test_the_verdict_names_the_equal_time_gap_and_the_longer_training_apart():
    text = recipes.verdict(ROWS, 50)
    assert text.startswith("At 1 CPU-hour and 50 steps, arm **f** leads with 47.0 %, 30.3 points above arm e")
    assert text.endswith("Trained on alone, arm f reaches 61.0 % at 2 CPU-hours.")
    assert "Trained on alone" not in recipes.verdict([r for r in ROWS if r["mark_cpu_hours"] < 2], 50)


def test_a_branch_arm_starts_from_its_parents_mark_and_cools_down_from_there_to_the_budget(tmp_path):
    """Arm h's first leg resumes f's 6 CPU-hour checkpoint (later legs its own last.ckpt), its cooldown spans 6 to the
    budget, and a missing parent checkpoint or a budget not past the branch point is refused in one sentence."""
    import pytest
    import yaml

    args = recipes.parse_args(["--arms", "h", "--cpu-hours", "8", "--marks", "7,8"])  # the config file says 6 to 7
    with pytest.raises(SystemExit, match="train arm f to that mark first"):
        recipes.training_jobs(args, tmp_path)
    parent = recipes.mark_checkpoint(tmp_path, "f", 6.0)
    parent.parent.mkdir(parents=True)
    parent.write_bytes(b"")
    (job,) = recipes.training_jobs(args, tmp_path)
    assert job.command[-2:] == ["--ckpt_path", str(parent)]
    config = yaml.safe_load((tmp_path / "h" / "config.yaml").read_text())
    (cooldown,) = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("CpuTimeCooldown")]
    assert cooldown["init_args"] == {"start_hours": 6.0, "end_hours": 8.0}
    assert config["model"]["init_args"]["loss_weight_gamma"] == 100.0
    own = recipes.checkpoint_folder(tmp_path, "h") / "last.ckpt"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"")
    assert recipes.training_jobs(args, tmp_path)[0].command[-1] == str(own)
    with pytest.raises(SystemExit, match="past that"):
        own.unlink()
        recipes.training_jobs(recipes.parse_args(["--arms", "h", "--cpu-hours", "6", "--marks", "6"]), tmp_path)


def test_a_warm_started_arm_trains_from_a_copy_of_its_start_and_stays_out_of_the_equal_time_race(tmp_path):
    """Arm j starts from the slim export of h (bundled until j replaced it, kept in benchmarks/resume): the study copies
    it into j's folder (so a later leg finds the same weights whatever happens to the file), its clock starts at the
    7 hours behind it, its cooldown runs to the budget, and it is not a from-scratch arm."""
    import yaml

    (job,) = recipes.training_jobs(recipes.parse_args(["--arms", "j", "--cpu-hours", "10", "--marks", "9,10"]), tmp_path)
    assert "--ckpt_path" not in job.command
    config = yaml.safe_load((tmp_path / "j" / "config.yaml").read_text())
    kept = tmp_path / "j" / "init_from.ckpt"
    assert config["model"]["init_args"]["init_from"] == str(kept)
    assert kept.read_bytes() == (ROOT / "benchmarks" / "resume" / "qm9_bonds_h_7h.ckpt").read_bytes()
    callbacks = {c["class_path"].rsplit(".", 1)[1]: c["init_args"] for c in config["trainer"]["callbacks"]}
    assert callbacks["CpuTimeBudget"] == {"hours": 10.0, "save_at": [9.0, 10.0], "spent_hours": 7.0}
    assert callbacks["CpuTimeCooldown"] == {"start_hours": 7.0, "end_hours": 10.0}
    assert not recipes.ARMS["j"].from_scratch and recipes.ARMS["f"].from_scratch and not recipes.ARMS["h"].from_scratch


def test_a_lost_arm_goes_on_from_its_slim_export_with_its_clock(tmp_path):
    """``--resume-from``: a new machine's first leg of arm j warm-starts from the committed export, its clock at the
    CPU-hours the export records; an export without them, or two arms, is refused in one sentence."""
    import pytest
    import torch
    import yaml

    slim = tmp_path / "j_slim.ckpt"
    torch.save({"state_dict": {}, "sci_diffusion": {"cpu_hours": 9.2}}, slim)
    args = recipes.parse_args(["--arms", "j", "--cpu-hours", "10", "--marks", "9.5,10", "--resume-from", str(slim)])
    (job,) = recipes.training_jobs(args, tmp_path / "work")
    config = yaml.safe_load((tmp_path / "work" / "j" / "config.yaml").read_text())
    assert (tmp_path / "work" / "j" / "init_from.ckpt").read_bytes() == slim.read_bytes()
    (budget,) = [c["init_args"] for c in config["trainer"]["callbacks"] if c["class_path"].endswith("CpuTimeBudget")]
    assert budget["spent_hours"] == 9.2 and "--ckpt_path" not in job.command
    torch.save({"state_dict": {}, "sci_diffusion": {}}, slim)
    with pytest.raises(SystemExit):
        recipes.parse_args(["--arms", "j", "--cpu-hours", "10", "--marks", "10", "--resume-from", str(slim)])
    with pytest.raises(SystemExit):
        recipes.parse_args(["--arms", "i,j", "--cpu-hours", "10", "--marks", "10", "--resume-from", str(slim)])
