"""The documentation's links and its index of study pages cannot go stale: a moved page, a renamed result or a
new benchmark that nobody listed turns these red."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_INDEX = ROOT / "docs" / "results" / "README.md"
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def relative_links(page: Path) -> list[str]:
    """The targets of a page's Markdown links and images that are paths in the repository (no URL, no anchor)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_every_relative_link_of_the_readme_and_docs_points_to_a_file():
    missing = [f"{page.relative_to(ROOT)} -> {target}" for page in MARKDOWN for target in relative_links(page)
               if not (page.parent / target).exists()]
    assert len(MARKDOWN) > 10 and not missing, missing


def test_the_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[here](gone.md), [the web](https://example.org), [a section](#top), ![a figure](fig.png)")
    assert relative_links(page) == ["gone.md", "fig.png"]


def test_the_results_index_lists_every_result_and_links_every_study_page():
    index = RESULTS_INDEX.read_text()
    pages = sorted(p for p in RESULTS_INDEX.parent.glob("*.md") if p != RESULTS_INDEX)
    blocks = {name for p in pages for name in re.findall(r"<!-- results:(\w+) -->", p.read_text())}
    files = {p.stem for p in (ROOT / "benchmarks" / "results").glob("*.json")}
    assert files <= blocks  # a result without its block is test_reporting's concern; here, the index
    unlisted = sorted(name for name in blocks if f"`{name}`" not in index)
    unlinked = sorted(p.name for p in pages if f"]({p.name})" not in index)
    assert not unlisted and not unlinked, (unlisted, unlinked)
    not_run = sorted(blocks - files)
    for name in not_run:  # the index says which blocks have no result yet, and no more
        assert re.search(rf"`{name}`[^|;]*not run yet", index), name


def test_the_readme_names_every_result():
    readme = (ROOT / "README.md").read_text()
    missing = sorted(p.stem for p in (ROOT / "benchmarks" / "results").glob("*.json") if p.stem not in readme)
    assert not missing, missing
