"""What every benchmark shares: the machine record, the result JSON and its study page's table.

Each benchmark writes ``benchmarks/results/<name>.json`` (with the exact command and the machine)
and replaces the Markdown between ``<!-- results:<name> -->`` and ``<!-- /results:<name> -->`` in
the study page of ``docs/results/`` that holds those markers, so each page's table is always the
output of the last run. The page is found by its markers, not by a table of names: a study page
names its own blocks (``mri2ct_phantom.md`` holds ``mri2ct_phantom``, ``mri2ct_residual_scale`` and
``mri2ct_equal_budget_2h``), and a new ``--result-name`` needs only its markers added to a page.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import torch

from sci_diffusion.atomic import atomic_path, write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGES = ROOT / "docs" / "results"  # one Markdown page per study


def machine() -> dict:
    """The machine a benchmark ran on: CPU, cores, torch, threads."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def command_line() -> str:
    """The command as typed, with the script path relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT).as_posix() if script.is_relative_to(ROOT) else sys.argv[0]
    return " ".join(shlex.quote(a) for a in [shown, *sys.argv[1:]])


PROVENANCE = ("command", "machine", "date")  # what write_result adds: the run that measured a result


def saved_result(name: str) -> tuple[dict, dict]:
    """A benchmark's saved ``results/<name>.json`` and its provenance (``PROVENANCE``), for re-rendering a run
    without measuring it again (``write_result(..., provenance=...)``)."""
    record = json.loads((RESULTS / f"{name}.json").read_text())
    return record, {k: record[k] for k in PROVENANCE}


def write_result(name: str, payload: dict, markdown: str, out: Path | None = None, update_page: bool = True,
                 provenance: dict | None = None) -> Path:
    """Write ``results/<name>.json`` (adding command, machine, date) and refresh its table in ``docs/results/``.

    ``provenance`` (``{"command", "machine", "date"}`` of an earlier run) replaces this process's
    own when a saved run is only re-rendered, so the record still names the run that measured it.
    """
    out = out or RESULTS / f"{name}.json"
    record = {"benchmark": name, "command": "python " + command_line(), "machine": machine(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **(provenance or {}), **payload}
    write_json(out, record)
    if update_page:
        replace_results_block(name, markdown + f"\n\n<sub>`{record['command']}` on {record['machine']['cpu']}, "
                              f"{record['machine']['cores']} cores, {record['date']}.</sub>")
    return out


def replace_results_block(name: str, markdown: str, pages: Path = PAGES) -> Path | None:
    """Replace the text between this benchmark's markers in the page of ``pages`` (a folder of ``*.md``) that
    holds them; returns that page, or None (with one warning line) when no page holds both markers."""
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    for page in sorted(pages.glob("*.md")):
        text = page.read_text()
        if pattern.search(text):
            with atomic_path(page, suffix=".md") as tmp:
                tmp.write_text(pattern.sub(lambda _: f"{start}\n{markdown}\n{end}", text))
            return page
    shown = pages.relative_to(ROOT) if pages.is_relative_to(ROOT) else pages
    print(f"No page in {shown}/ has a {start} ... {end} block; the table was not updated.", file=sys.stderr)
    return None


def replace_readme_row(first_cell: str, row: str, readme: Path = ROOT / "README.md") -> bool:
    """Replace the README's results-table row whose first cell is ``first_cell`` by ``row`` (a Markdown
    table line); returns False, with one warning line, when the README has no such row."""
    lines = readme.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(f"| {first_cell} |"):
            lines[i] = row.rstrip("\n") + "\n"
            with atomic_path(readme, suffix=".md") as tmp:
                tmp.write_text("".join(lines))
            return True
    print(f"The README has no results row starting '| {first_cell} |'; it was not updated.", file=sys.stderr)
    return False
