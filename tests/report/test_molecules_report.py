"""The molecules page's content, read back from the file: one SDF record and depiction per molecule, every column
of the candidates table, the metrics beside the published rows and, for a conditional run, the MAE and plot."""
from __future__ import annotations

import base64
import csv
import gzip
import json

from sci_diffusion.cli import main
from sci_diffusion_molecules.report.page import write_report

from .test_page import blocks


def page_data(path) -> dict:
    return json.loads(gzip.decompress(base64.b64decode(blocks(path.read_text())["molecules"][1])))


def test_the_page_carries_every_molecule_as_sdf_with_every_column_of_the_candidates_table(molecules_run, tmp_path):
    line = write_report(molecules_run / "run.sdf", tmp_path / "run.html")
    data = page_data(tmp_path / "run.html")
    with open(molecules_run / "run.csv") as handle:
        table = list(csv.DictReader(handle))
    assert "8 molecules" in line
    assert len(data["records"]) == len(data["depictions"]) == len(data["rows"]) == len(table) == 8
    keys = [c["key"] for c in data["columns"]]
    assert set(table[0]) <= set(keys) and {"formula", "atoms"} <= set(keys)
    for row, csv_row, record in zip(data["rows"], table, data["records"]):
        assert str(row["smiles"]) == csv_row["smiles"] and row["valid"] == int(csv_row["valid"])
        assert record.count("\n") > row["atoms"] and record.rstrip().endswith("M  END")  # a whole mol block
        assert row["_bad"] == (row["valid"] == 0)
    assert data["rows"][0]["formula"] == "C2H6O" and data["rows"][0]["atoms"] == 9
    assert data["rows"][-1]["_bad"]  # the scrambled molecule is marked as failing
    assert all(svg.startswith("<svg") for svg in data["depictions"])


def test_a_conditional_run_shows_the_mae_against_the_target_beside_the_published_rows(molecules_run, tmp_path):
    write_report(molecules_run / "run.sdf", tmp_path / "run.html")
    text = (tmp_path / "run.html").read_text()
    mae_mev = 1000 * sum(abs(0.3 * (k - 3)) for k in range(8)) / 8  # the fixture's predictions: 6.5 + 0.3 (k - 3)
    assert f"this run (8 molecules)</td><td>{mae_mev:.3g}" in text
    assert "GeoLDM</td><td>587" in text and "EDM (2022), 1000 steps" in text
    assert "<svg" in text.split("Conditional generation")[1].split("Candidates")[0]  # the plot
    assert "SYNTHETIC" in text.split("<header>")[0]


def test_the_page_of_an_evaluate_molecules_json_shows_its_metrics_and_finds_its_samples(molecules_run, tmp_path):
    metrics = {"samples": "elsewhere/run.sdf", "atom_stability": 0.5, "molecule_stability": 0.25, "validity": 0.75,
               "uniqueness": 1.0, "validity_x_uniqueness": 0.75, "novelty": 0.5, "n_molecules": 8}
    (molecules_run / "metrics.json").write_text(json.dumps(metrics))  # a moved run: the samples are found beside it
    write_report(molecules_run / "metrics.json", tmp_path / "m.html")
    text = (tmp_path / "m.html").read_text()
    assert "<td>this run: 8 molecules, dpmpp2m_sde 50 steps</td><td>50.0</td><td>25.0</td><td>75.0</td><td>75.0</td>" \
           "<td>50.0</td>" in text
    assert len(page_data(tmp_path / "m.html")["records"]) == 8


def test_sample_molecules_report_flag_refuses_a_bad_page_path_before_sampling(tmp_path, capsys):
    code = main(["sample", "molecules", "--num", "2", "--out", str(tmp_path / "a.sdf"), "--report", str(tmp_path / "a.png")])
    assert code == 2 and "--report" in capsys.readouterr().err
    assert not (tmp_path / "a.sdf").exists()
