"""What every benchmark shares: the machine record, the result JSON and the README table.

Each benchmark writes ``benchmarks/results/<name>.json`` (with the exact command and the machine)
and replaces the Markdown between ``<!-- results:<name> -->`` and ``<!-- /results:<name> -->`` in
README.md, so the README's table is always the output of the last run.
"""
from __future__ import annotations

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


def write_result(name: str, payload: dict, markdown: str, out: Path | None = None, update_readme: bool = True,
                 provenance: dict | None = None) -> Path:
    """Write ``results/<name>.json`` (adding command, machine, date) and refresh the README table.

    ``provenance`` (``{"command", "machine", "date"}`` of an earlier run) replaces this process's
    own when a saved run is only re-rendered, so the record still names the run that measured it.
    """
    out = out or RESULTS / f"{name}.json"
    record = {"benchmark": name, "command": "python " + command_line(), "machine": machine(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **(provenance or {}), **payload}
    write_json(out, record)
    if update_readme:
        replace_readme_block(name, markdown + f"\n\n<sub>`{record['command']}` on {record['machine']['cpu']}, "
                             f"{record['machine']['cores']} cores, {record['date']}.</sub>")
    return out


def replace_readme_block(name: str, markdown: str, readme: Path = ROOT / "README.md") -> None:
    """Replace the text between this benchmark's README markers (which must exist)."""
    text = readme.read_text()
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        print(f"README.md has no {start} block; the table was not updated.", file=sys.stderr)
        return
    new = pattern.sub(lambda _: f"{start}\n{markdown}\n{end}", text)
    with atomic_path(readme, suffix=".md") as tmp:
        tmp.write_text(new)
