"""The CPU-inference benchmark's decisions and its re-rendering (benchmarks/molecules_cpu_inference.py): a backend
is adopted only when it is faster and within a point of eager fp32's stability on the same molecules, and
``--from-json`` rewrites a saved run's table with the settings of the run's own command, its provenance kept."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
_spec = importlib.util.spec_from_file_location("molecules_cpu_inference",
                                               ROOT / "benchmarks" / "molecules_cpu_inference.py")
inference = sys.modules["molecules_cpu_inference"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inference)


def speed(backend: str, seconds: float) -> dict:
    return {"backend": backend, "cpu_seconds_per_pass": seconds, "passes": [seconds], "max_abs_deviation": 0.0,
            "threads": 1, "molecules_per_pass": 4, "atoms": 70, "edges": 1100}


def quality(backend: str, stable: list[bool]) -> dict:
    return {"backend": backend, "molecules": len(stable), "molecule_stability": sum(stable) / len(stable),
            "validity": 1.0, "atom_stability": 1.0, "stable": stable}


REFERENCE = [True] * 80 + [False] * 20  # eager fp32: 80 % stable


def test_a_backend_is_adopted_only_when_faster_at_equal_stability():
    same = list(REFERENCE)
    worse = [False] * 10 + REFERENCE[10:]  # ten stable molecules lost: -10 points
    decided = inference.verdicts(
        [speed("eager fp32", 1.0), speed("compiled", 0.5), speed("int8 dynamic", 0.4), speed("onnxruntime", 1.5)],
        [quality("eager fp32", REFERENCE), quality("compiled", same), quality("int8 dynamic", worse),
         quality("onnxruntime", same)])
    assert decided["compiled"] == {"speedup": 2.0, "stability_difference": 0.0, "interval": [0.0, 0.0],
                                   "adopt": True}
    assert decided["int8 dynamic"]["stability_difference"] == pytest.approx(-0.10)
    assert decided["int8 dynamic"]["interval"][1] < 0 and not decided["int8 dynamic"]["adopt"]  # faster, worse
    assert decided["onnxruntime"]["speedup"] == pytest.approx(2 / 3) and not decided["onnxruntime"]["adopt"]  # slower


def test_from_json_rerenders_a_saved_run_with_its_own_settings_and_provenance(tmp_path, monkeypatch):
    rows = [speed("eager fp32", 0.68), speed("compiled", 0.47)]
    saved = {"benchmark": "molecules_cpu_inference",
             "command": "python benchmarks/molecules_cpu_inference.py --batch-size 4 --repeats 3 --num 100 "
                        "--budget-minutes 1 --backends 'eager fp32,compiled'",
             "machine": {"cpu": "a CPU of the past", "cores": 2}, "date": "2026-01-01 00:00 UTC",
             "checkpoint": "a.ckpt", "speed": rows,
             "quality": [quality("eager fp32", REFERENCE), quality("compiled", REFERENCE)],
             "verdicts": {}, "skipped_quality": []}
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(saved))
    results, pages, readme = tmp_path / "results", {}, {}
    results.mkdir()
    monkeypatch.setitem(inference.write_result.__globals__, "RESULTS", results)
    monkeypatch.setitem(inference.write_result.__globals__, "replace_results_block",
                        lambda name, text: pages.update({name: text}))
    monkeypatch.setattr(inference, "replace_readme_row", lambda cell, row: readme.update({cell: row}) or True)
    assert inference.main(["--from-json", str(path)]) == 0
    written = json.loads((results / "molecules_cpu_inference.json").read_text())
    assert {k: written[k] for k in ("command", "machine", "date")} == {k: saved[k] for k in ("command", "machine", "date")}
    assert written["verdicts"]["compiled"]["adopt"] and written["speed"] == rows
    page = pages["molecules_cpu_inference"]
    assert page.startswith("Bond-aware default network, one pass over 4 molecules") and "median of 3;" in page
    assert "| compiled | 0.470 | 1.45x |" in page and saved["command"] in page
    row = readme["CPU inference backends (issue 32)"]
    assert "compiled 1.45x" in row and "adopted: compiled" in row
    readme_text = (ROOT / "README.md").read_text()
    assert "| CPU inference backends (issue 32) |" in readme_text  # the row the result replaces exists


def test_measuring_needs_a_budget(capsys):
    with pytest.raises(SystemExit) as stop:
        inference.parse_args(["--num", "10"])
    assert stop.value.code == 2 and "--budget-minutes is required" in capsys.readouterr().err


def test_a_missing_checkpoint_is_one_sentence_not_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        inference.parse_args(["--budget-minutes", "1", "--ckpt", str(tmp_path / "gone.ckpt")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "gone.ckpt is not there" in err and "Traceback" not in err


def test_a_missing_onnx_extra_is_named_in_one_sentence(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else object())
    assert inference.onnx_missing() == "onnxscript not installed (pip install -e '.[onnx]')"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert inference.onnx_missing() is None
