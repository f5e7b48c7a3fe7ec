"""The time-grid benchmark (benchmarks/molecules_time_grids.py) compares each spacing with the default grid at the
same step count, on the same molecules, and leaves the default's own rows without a difference."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import molecules_time_grids as grids  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)


def row(steps: int, spacing: str, stable: list[bool]) -> dict:
    return {"steps": steps, "spacing": spacing, "stable": stable}


def test_each_spacing_is_compared_with_the_default_grid_at_its_own_step_count():
    rows = grids.with_differences([
        row(8, "quadratic", [True] * 60 + [False] * 40), row(8, "cubic", [True] * 70 + [False] * 30),
        row(20, "quadratic", [True] * 90 + [False] * 10), row(20, "cubic", [True] * 90 + [False] * 10)])
    assert rows[1]["difference_to_reference"][0] == 10.0  # 70 against the 8-step default's 60, not the 20-step 90
    assert rows[1]["difference_to_reference"][1] > 0  # ten molecules gained and none lost: the interval excludes 0
    assert rows[3]["difference_to_reference"] == [0.0, 0.0, 0.0]
    assert "difference_to_reference" not in rows[0] and "difference_to_reference" not in rows[2]


def test_a_missing_checkpoint_or_unknown_precision_is_one_sentence(capsys):
    for argv, said in ((["--ckpt", "/no/such.ckpt"], "is not there"), (["--precision", "fp16"], "invalid choice")):
        with pytest.raises(SystemExit) as exit:
            grids.parse_args(argv)
        assert exit.value.code == 2 and said in capsys.readouterr().err
