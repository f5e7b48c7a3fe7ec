"""A benchmark's table lands in its study page (docs/results/), between its own markers and nowhere else."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("reporting", ROOT / "benchmarks" / "reporting.py")
reporting = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reporting)


def block(name: str, body: str) -> str:
    return f"<!-- results:{name} -->\n{body}\n<!-- /results:{name} -->"


def test_the_block_is_replaced_in_the_page_that_holds_it_and_nothing_else_changes(tmp_path, capsys):
    other = tmp_path / "a_other.md"
    other.write_text(f"# Other\n\n{block('other', 'old other')}\n")
    page = tmp_path / "study.md"
    before = "# Study\n\nCommentary above.\n\n"
    between = "\n\nCommentary between.\n\n"
    after = "\n\nCommentary below.\n"
    # study_more starts with the name study: its block must survive a refresh of study's
    page.write_text(before + block("study", "| old | table |") + between + block("study_more", "kept") + after)
    other_text = other.read_text()

    written = reporting.replace_results_block("study", "| new | table |", pages=tmp_path)

    assert written == page
    assert page.read_text() == before + block("study", "| new | table |") + between + block("study_more", "kept") + after
    assert other.read_text() == other_text
    assert capsys.readouterr().err == ""


def test_a_block_without_its_end_marker_is_left_alone_with_one_warning(tmp_path, capsys):
    page = tmp_path / "study.md"
    text = "# Study\n\n<!-- results:study -->\n| old | table |\n\nCommentary that must not be eaten.\n"
    page.write_text(text)

    assert reporting.replace_results_block("study", "| new |", pages=tmp_path) is None

    assert page.read_text() == text
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "<!-- results:study -->" in warning and "not updated" in warning


def test_every_benchmark_result_has_its_block_in_a_study_page():
    pages = "\n".join(p.read_text() for p in sorted(reporting.PAGES.glob("*.md")))
    for result in sorted(reporting.RESULTS.glob("*.json")):
        name = result.stem
        assert f"<!-- results:{name} -->" in pages and f"<!-- /results:{name} -->" in pages, name
