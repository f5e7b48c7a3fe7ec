"""sample molecules --xtb and --oversample (issue 29 §3): GFN2-xTB's view of each candidate, and keeping those
whose relaxed xTB gap lies closest to their target."""
import csv
import json

import numpy as np
import pytest

from sci_diffusion.cli import main
from sci_diffusion_molecules.chem.files import MoleculeWriter, copy_records, read_molecules
from sci_diffusion_molecules.evaluation.xtb_candidates import (
    RELAXATION,
    RELAXED,
    XTB_GAP,
    XTB_GAP_RELAXED,
    closest_to_target,
    relax_rows,
    rows_to_relax,
    xtb_scores,
)
from sci_diffusion_molecules.evaluation.xtb_gap import read_gap_scale, xtb_gap_ev

from .conftest import needs_tblite

TARGET = "target_gap [eV]"


def test_the_kept_rows_are_the_eligible_ones_closest_to_their_own_targets():
    rows = [{"index": 0, TARGET: "6.5", XTB_GAP_RELAXED: "6.0", "ok": True},   # 0.5 away
            {"index": 1, TARGET: "6.5", XTB_GAP_RELAXED: "6.6", "ok": True},   # 0.1
            {"index": 2, TARGET: "8.0", XTB_GAP_RELAXED: "6.6", "ok": True},   # 1.4: its own target counts
            {"index": 3, TARGET: "6.5", XTB_GAP_RELAXED: "", "ok": True},      # no xTB gap: never kept
            {"index": 4, TARGET: "6.5", XTB_GAP_RELAXED: "6.5", "ok": False}]  # 0, but not eligible
    assert closest_to_target(rows, TARGET, 2, lambda r: r["ok"]) == [0, 1]
    assert closest_to_target(rows, TARGET, 9, lambda r: r["ok"]) == [0, 1, 2]  # fewer qualify than asked
    assert closest_to_target(rows, TARGET, 1) == [4]


def test_the_screen_relaxes_the_eligible_rows_closest_to_their_targets_by_written_gap():
    rows = [{"index": 0, TARGET: "6.5", XTB_GAP: "5.0", "ok": True},   # 1.5 away at the written geometry
            {"index": 1, TARGET: "6.5", XTB_GAP: "6.4", "ok": True},   # 0.1
            {"index": 2, TARGET: "8.0", XTB_GAP: "7.0", "ok": True},   # 1.0, from its own target
            {"index": 3, TARGET: "6.5", XTB_GAP: "", "ok": True},      # xTB could not score it: never relaxed
            {"index": 4, TARGET: "6.5", XTB_GAP: "6.5", "ok": False}]  # 0, but it may not be kept
    ok = lambda r: r["ok"]  # noqa: E731
    assert rows_to_relax(rows, asked=1, screen=2.0, eligible=ok) == [1, 2]
    assert rows_to_relax(rows, asked=1, screen=1.5, eligible=ok) == [1, 2]  # ceil(1.5) = 2
    assert rows_to_relax(rows, asked=1, screen=1.0, eligible=ok) == [1]
    assert rows_to_relax(rows, asked=1, screen=0, eligible=ok) == [0, 1, 2]  # 0: every eligible one
    assert rows_to_relax(rows, asked=None, screen=2.0) == [0, 1, 2, 4]  # no --oversample: every scored one


@needs_tblite
def test_relaxing_in_two_processes_gives_what_one_gives(qm9):
    shaken, molecules = np.random.default_rng(1), {}
    for i in range(3):
        z, pos = qm9.molecule(4000 + i)
        molecules[i] = (z, pos + 0.05 * shaken.standard_normal(pos.shape), None)
    scale, done = read_gap_scale(), []
    one = relax_rows(molecules, [0, 2], scale, workers=1)
    two = relax_rows(molecules, [0, 2], scale, workers=2, progress=lambda: done.append(1))
    assert one == two and sorted(one) == [0, 2] and len(done) == 2
    assert all(cells[RELAXED] == 1 and float(cells[RELAXATION]) > 0 for cells in one.values())


@pytest.mark.parametrize("suffix", [".sdf", ".xyz"])
def test_records_are_copied_by_their_index_unchanged(qm9, tmp_path, suffix):
    source, target = tmp_path / f"all{suffix}", tmp_path / f"some{suffix}"
    with MoleculeWriter(source) as writer:
        for i in range(5):
            writer.write(*qm9.molecule(10 + i), {"index": i, "SYNTHETIC": 1})
    assert copy_records(source, target, [3, 1]) == 2
    copied = read_molecules(target)
    assert [m[2]["index"] for m in copied] == ["1", "3"]
    for (z, pos, _), i in zip(copied, (1, 3)):
        np.testing.assert_array_equal(z, qm9.molecule(10 + i)[0])
        np.testing.assert_allclose(pos, qm9.molecule(10 + i)[1], atol=1e-4)


@needs_tblite
def test_a_real_molecule_barely_relaxes_and_keeps_its_gap(qm9):
    """A QM9 molecule sits at a DFT minimum: xTB relaxes it by little, and its mapped gap moves by little."""
    z, pos = qm9.molecule(2000)
    scale = read_gap_scale()
    cells = xtb_scores(z, pos, scale)
    assert float(cells[XTB_GAP]) == pytest.approx(scale.to_dft(xtb_gap_ev(z, pos)), abs=1e-4)
    assert 0 <= float(cells[RELAXATION]) < 5.0 and abs(float(cells[XTB_GAP_RELAXED]) - float(cells[XTB_GAP])) < 0.5


@needs_tblite
def test_the_relaxed_gap_is_the_gap_of_the_nearest_minimum(qm9):
    """The same molecule shaken by 0.15 A: its gap at the shaken geometry is off, its relaxed gap is back near the
    gap of the real (minimum) geometry, and relaxing gave up a lot of energy."""
    z, pos = qm9.molecule(3000)
    scale = read_gap_scale()
    real = scale.to_dft(xtb_gap_ev(z, pos))
    cells = xtb_scores(z, pos + 0.15 * np.random.default_rng(0).standard_normal(pos.shape), scale)
    assert abs(float(cells[XTB_GAP_RELAXED]) - real) < 0.2 < abs(float(cells[XTB_GAP]) - real)  # measured 0.06, 0.67
    assert float(cells[RELAXATION]) > 50.0


@needs_tblite
def test_oversampling_writes_the_drawn_molecules_closest_to_their_target_by_xtb(tmp_path, capsys):
    out = tmp_path / "c.sdf"
    assert main(["sample", "molecules", "--condition", "gap=6.5", "--num", "3", "--oversample", "3", "--xtb",
                 "--steps", "20", "--no-progress", "--no-novelty", "--out", str(out)]) == 0
    summary = json.loads((tmp_path / "c.sdf.json").read_text())
    with open(tmp_path / "c.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 9 == summary["xtb"]["drawn"] and len(read_molecules(tmp_path / "c.drawn.sdf")) <= 9
    kept = sorted(int(r["index"]) for r in rows if r["kept_by_xtb"] == "1")
    assert sorted(int(m[2]["index"]) for m in read_molecules(out)) == kept and len(kept) == summary["written"] == 3
    error = {int(r["index"]): abs(float(r[XTB_GAP_RELAXED]) - 6.5) for r in rows if r[XTB_GAP_RELAXED]}
    assert max(error[i] for i in kept) <= min((e for i, e in error.items() if i not in kept), default=np.inf)
    assert summary["xtb"]["median_abs_xtb_gap_error_ev"] == pytest.approx(float(np.median([error[i] for i in kept])))
    printed = capsys.readouterr().out
    assert "kept 3 of 9 drawn" in printed and "the 3 candidates kept by their relaxed xTB gap:" in printed
    preview = printed.split("kept by their relaxed xTB gap:\n")[1].splitlines()
    assert "xtb_gap_relaxed" in preview[0] and [int(line.split()[0]) for line in preview[1:4]] == kept
    # the default screen relaxed at most 2 x 3 of them, those closest to the target at their written geometry
    relaxed = [r for r in rows if r[RELAXED] == "1"]
    assert len(relaxed) <= 6 and summary["xtb"]["relaxed"] == len(relaxed) and set(kept) <= {int(r["index"]) for r in relaxed}
    written = {int(r["index"]): abs(float(r[XTB_GAP]) - 6.5) for r in rows if r[XTB_GAP] and r["failed"] == "0"}
    screened_out = [e for i, e in written.items() if i not in {int(r["index"]) for r in relaxed}]
    if len(relaxed) == 6:  # the screen was full: nothing it left out was closer than what it relaxed
        assert max(written[int(r["index"])] for r in relaxed) <= min(screened_out, default=np.inf)


@pytest.mark.parametrize("extra, words", [
    (["--condition", "gap=6.5", "--oversample", "2"], "add --xtb"),
    (["--condition", "gap=6.5", "--oversample", "0"], "--oversample must be 1 or more"),
    (["--oversample", "2", "--xtb"], "add --condition gap=VALUE"),
    (["--smiles", "CCO", "--xtb"], "--xtb work"),
    (["--condition", "gap=6.5", "--xtb", "--xtb-workers", "0"], "--xtb-workers must be 1 or more"),
    (["--condition", "gap=6.5", "--xtb", "--xtb-screen", "-1"], "--xtb-screen must be 0"),
])
def test_xtb_flags_that_cannot_work_get_one_sentence(extra, words, tmp_path, capsys):
    assert main(["sample", "molecules", "--num", "2", "--out", str(tmp_path / "x.sdf"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and words in err
    assert not (tmp_path / "x.sdf").exists()
