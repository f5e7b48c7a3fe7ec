"""The report pages in a real browser (headless Chromium, WebGL on SwiftShader): each opens from its file with
no JavaScript error, its 3-D and volume canvases are drawn (more than one colour once the SYNTHETIC labels over
them are hidden), the table sorts and filters, the views follow one another; and a damaged vendored library is
caught by the same checks."""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest

import sci_diffusion_medical.report.viewer as medical_viewer
import sci_diffusion_molecules.report.page as molecules_page
from sci_diffusion_medical.report.page import write_report as write_medical_report
from sci_diffusion_molecules.report.page import write_report as write_molecules_report

from .browser import Chromium, distinct_colours

MOLECULE_CANVAS = "#viewer3d canvas"
VOLUME_CANVASES = [f"#canvas-{k}" for k in range(5)]


def page_problems(chromium: Chromium, page: Path, canvases: list[str], wait: float = 120.0) -> list[str]:
    """What is wrong with a page in the browser: its JavaScript errors, a page that never says it is drawn, and
    blank canvases (one colour, the SYNTHETIC labels over them hidden). Empty for a good page."""
    visit = chromium.visit(page, wait=wait)
    problems = [f"JavaScript error: {e}" for e in visit.errors]
    if not visit.ready:
        problems.append("the page never set window.reportReady")
    for selector in canvases:
        if not chromium.evaluate(f"document.querySelector({selector!r}) !== null"):
            problems.append(f"no {selector}")
        elif distinct_colours(chromium.screenshot(selector, hide=".synthetic-mark")) < 2:
            problems.append(f"{selector} is blank")
    return problems


def test_the_molecules_page_draws_the_selected_molecule_in_3d_and_its_table_sorts_and_filters(chromium, molecules_run,
                                                                                              tmp_path):
    write_molecules_report(molecules_run / "run.sdf", tmp_path / "m.html")
    assert page_problems(chromium, tmp_path / "m.html", [MOLECULE_CANVAS]) == []
    first = chromium.screenshot(MOLECULE_CANVAS, hide=".synthetic-mark")
    rows = "document.querySelectorAll('#candidates tbody tr')"
    assert chromium.evaluate(f"{rows}.length") == 8
    chromium.evaluate("(() => { const f = document.querySelector('#candidates input'); f.value = 'valid=0';"
                      " f.dispatchEvent(new Event('input')); })()")
    invalid = sum(row["valid"] == "0" for row in csv.DictReader((molecules_run / "run.csv").open()))
    assert 1 <= invalid < 8 and chromium.evaluate(f"{rows}.length") == invalid  # the scrambled molecule among them
    chromium.evaluate("(() => { const f = document.querySelector('#candidates input'); f.value = '';"
                      " f.dispatchEvent(new Event('input')); })()")
    atoms = chromium.evaluate("[...document.querySelectorAll('#candidates th')].findIndex(th => th.textContent === 'atoms')")
    chromium.evaluate(f"document.querySelectorAll('#candidates th')[{atoms}].click()")
    column = chromium.evaluate(f"[...{rows}].map(r => Number(r.cells[{atoms}].textContent))")
    assert column == sorted(column) and column != [int(x) for x in column[::-1]]
    chromium.evaluate(f"{rows}[{len(column) - 1}].click()")  # the largest molecule
    assert (chromium.screenshot(MOLECULE_CANVAS, hide=".synthetic-mark") != first).any()  # the view follows the table


def test_the_translation_page_draws_five_linked_views_each_marked_synthetic(chromium, translated_phantom, tmp_path):
    write_medical_report(translated_phantom["sct"], tmp_path / "t.html")
    assert page_problems(chromium, tmp_path / "t.html", VOLUME_CANVASES) == []
    marks = chromium.evaluate("[...document.querySelectorAll('.volume-canvas')].map(c => { const m ="
                              " c.querySelector('.synthetic-mark'); return m !== null && getComputedStyle(m).visibility"
                              " === 'visible' && m.getBoundingClientRect().width > 0; })")
    assert marks == [True] * 5
    box = chromium.evaluate("(() => { const r = document.querySelector('#canvas-0').getBoundingClientRect();"
                            " return [r.x + r.width * 0.3, r.y + r.height * 0.6]; })()")
    for kind in ("mousePressed", "mouseReleased"):
        chromium.send("Input.dispatchMouseEvent", session=True, type=kind, x=box[0], y=box[1], button="left", clickCount=1)
    positions = chromium.evaluate("window.volumeViewers.map(nv => Array.from(nv.scene.crosshairPos).map(v => v.toFixed(3)))")
    assert positions[0] != ["0.500"] * 3 and all(p == positions[0] for p in positions)  # moved, and all views with it


@pytest.mark.parametrize("library", ["3dmol", "niivue"])
def test_a_damaged_vendored_library_is_caught_by_the_same_checks(chromium, molecules_run, translated_phantom, tmp_path,
                                                                 monkeypatch, library):
    module, name = (molecules_page, "THREE_DMOL") if library == "3dmol" else (medical_viewer, "NIIVUE")
    original = getattr(module, name)
    damaged = tmp_path / original.path.name
    damaged.write_bytes(original.path.read_bytes()[: original.path.stat().st_size // 2])  # a truncated copy
    monkeypatch.setattr(module, name, dataclasses.replace(original, path=damaged))
    if library == "3dmol":
        write_molecules_report(molecules_run / "run.sdf", tmp_path / "p.html")
        problems = page_problems(chromium, tmp_path / "p.html", [MOLECULE_CANVAS], wait=10.0)
    else:
        write_medical_report(translated_phantom["sct"], tmp_path / "p.html")
        problems = page_problems(chromium, tmp_path / "p.html", VOLUME_CANVASES[:1], wait=10.0)
    assert any(p.startswith("JavaScript error") for p in problems) and "the page never set window.reportReady" in problems
