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


def test_a_run_writes_under_its_result_name_and_keeps_the_default_table(monkeypatch, tmp_path):
    class Stub:
        atom_count_histogram = {5: 1, 9: 3}

        def eval(self):
            return self

    written = {}
    monkeypatch.setattr(grids, "load_module", lambda ckpt, domain: Stub())
    monkeypatch.setattr(grids, "draw_atom_counts", lambda histogram, num, generator: [9] * num)
    monkeypatch.setattr(grids, "grid_row", lambda module, counts, steps, spacing, seed, precision: {
        "steps": steps, "spacing": spacing, "molecules": len(counts), "molecule_stability": 0.5, "validity": 0.9,
        "own_bonds_stability": 0.6, "stable": [True, False] * (len(counts) // 2)})
    monkeypatch.setattr(grids, "write_result", lambda name, record, markdown, update_page: written.update(
        {name: record}))
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"")
    assert grids.main(["--ckpt", str(ckpt), "--steps", "50", "--num", "4", "--result-name", "grids_10k"]) == 0
    assert list(written) == ["grids_10k"] and written["grids_10k"]["num"] == 4
    assert grids.parse_args(["--ckpt", str(ckpt)]).result_name == "molecules_time_grids"
