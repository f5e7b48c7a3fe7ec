"""The core's page shell: everything inlined and escaped so that no data can end a <script>, compressed data that
decodes to what went in, vendored libraries intact, and the report verb's one-sentence refusals."""
from __future__ import annotations

import base64
import gzip
import hashlib
import html
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from sci_diffusion.cli import main
from sci_diffusion.report.page import ReportPage, html_table
from sci_diffusion.report.run_files import find_recorded_path
from sci_diffusion_medical.report.viewer import NIIVUE
from sci_diffusion_molecules.report.page import THREE_DMOL


class ScriptElements(HTMLParser):
    """The ``<script>`` elements of a page as a browser's tokenizer sees them: ``[(attributes, content)]``."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[dict, str]] = []
        self.ends = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.found.append((dict(attrs), ""))

    def handle_data(self, data):
        if self.lasttag == "script" and self.found and len(self.found) > self.ends:
            attrs, content = self.found[-1]
            self.found[-1] = (attrs, content + data)

    def handle_endtag(self, tag):
        if tag == "script":
            self.ends += 1


def blocks(text: str) -> dict[str, tuple[str, str]]:
    """``{id: (type, content)}`` of a page's data blocks."""
    parsed = ScriptElements(text)
    assert parsed.ends == len(parsed.found)  # every script element closed where it should be, and only there
    return {attrs["id"]: (attrs["type"], content) for attrs, content in parsed.found if "id" in attrs}


def test_data_that_holds_a_closing_script_tag_stays_inside_its_block_and_comes_back_unchanged(tmp_path):
    hostile = {"smiles": "</script><script>alert(1)</script>", "note": "a < b & c > d", "nan": float("nan")}
    page = ReportPage("a </script> title", synthetic="SYNTHETIC")
    page.add_json("plain", hostile)
    page.add_compressed_json("packed", {"rows": [hostile] * 50})
    page.add_bytes("raw", b"\x00\x01binary\xff")
    page.add_section("Table", html_table(["name"], [["</td><b>x"]]))
    size = page.write(tmp_path / "page.html")
    text = (tmp_path / "page.html").read_text()
    assert size == len(text.encode())
    found = blocks(text)
    expected = {**hostile, "nan": None}  # strict JSON: NaN becomes null
    assert json.loads(found["plain"][1]) == expected
    assert json.loads(gzip.decompress(base64.b64decode(found["packed"][1]))) == {"rows": [expected] * 50}
    assert base64.b64decode(found["raw"][1]) == b"\x00\x01binary\xff"
    assert "&lt;/td&gt;&lt;b&gt;x" in text and html.escape("a </script> title") in text


@pytest.mark.parametrize("library", [THREE_DMOL, NIIVUE], ids=["3dmol", "niivue"])
def test_each_vendored_library_is_the_file_copied_from_npm_with_its_licence(library):
    assert hashlib.sha256(library.path.read_bytes()).hexdigest() == library.sha256
    assert library.licence.is_file() and "Redistribution" in library.licence.read_text()
    assert library.version in (library.path.parent / "README.md").read_text()


def test_a_page_inlines_a_vendored_library_once_with_its_licence_at_the_foot(tmp_path):
    page = ReportPage("t")
    page.use(THREE_DMOL)
    page.use(THREE_DMOL)
    text = page.render()
    assert text.count("3dmol 2.5.5 from the npm registry") == 1
    assert "University of Pittsburgh" in text  # the BSD-3-Clause notice travels with the code
    assert "src=" not in text.split("<body>")[1].split("<footer>")[0]  # nothing is loaded from elsewhere


def test_a_recorded_path_is_found_again_after_the_outputs_moved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recorded relative path must not exist where the test runs (make demo writes it)
    moved = tmp_path / "b" / "demo" / "phantom" / "1BA001" / "mr.nii.gz"
    moved.parent.mkdir(parents=True)
    moved.write_bytes(b"x")
    near = tmp_path / "b" / "demo" / "sct" / "1BA001"
    near.mkdir(parents=True)
    assert find_recorded_path("out/demo/phantom/1BA001/mr.nii.gz", near) == moved
    assert find_recorded_path("out/demo/phantom/1BA002/mr.nii.gz", near) is None
    assert find_recorded_path(None, near) is None


def run_expecting_one_sentence(argv, capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and err.startswith("sci-diffusion: error: ") and err.endswith(".")
    return err


def test_the_report_verb_refuses_what_is_not_a_run_output_in_one_sentence(tmp_path, capsys, molecules_run):
    out = str(tmp_path / "r.html")
    assert "does not exist" in run_expecting_one_sentence(["report", str(tmp_path / "nothing.sdf"), "--out", out], capsys)
    (tmp_path / "folder").mkdir()
    err = run_expecting_one_sentence(["report", str(tmp_path / "folder"), "--out", out], capsys)
    assert "is not a run output" in err and "molecules" in err and "evaluate mri2ct" in err
    (tmp_path / "metrics.json").write_text(json.dumps({"samples": str(tmp_path / "gone.sdf"), "atom_stability": 0.9}))
    assert "gone.sdf" in run_expecting_one_sentence(["report", str(tmp_path / "metrics.json"), "--out", out], capsys)
    (tmp_path / "broken.sdf").write_text("not a molecule\n")
    assert "broken.sdf" in run_expecting_one_sentence(["report", str(tmp_path / "broken.sdf"), "--out", out], capsys)
    err = run_expecting_one_sentence(["report", str(molecules_run / "run.sdf"), "--out", str(tmp_path / "r.txt")], capsys)
    assert ".html" in err
    assert not Path(out).exists()
