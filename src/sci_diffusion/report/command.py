"""``sci-diffusion report RUN_OUTPUT --out report.html``: the page of a run, by the domain whose run it is.

Each installed domain's :class:`~sci_diffusion.domains.Reporter` is asked whether the path is one of its run
outputs; the one that recognises it writes the page. A path no domain recognises, or one that is missing, is
one sentence and exit status 2.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..atomic import check_writable
from ..domains import available_domains
from ..errors import UserError


def check_report_path(path: str | None, flag: str = "--report") -> None:
    """Refuse, before any work, a report path that could not be written or is not an .html file."""
    if path is None:
        return
    if Path(path).suffix.lower() not in (".html", ".htm"):
        raise UserError(f"{flag} {path} must be an .html file.")
    check_writable(path, flag)


def write_report(run_output: str | Path, out: str | Path) -> str:
    """Write the page of ``run_output`` to ``out`` and return the domain's one-line account of it.

    Raises:
        UserError: the path is missing, or no installed domain recognises it as a run output.
    """
    run_output, out = Path(run_output), Path(out)
    check_report_path(str(out), "--out")
    if not run_output.exists():
        raise UserError(f"{run_output} does not exist.")
    reporters = [d.reporter for d in available_domains().values() if d.reporter is not None]
    for reporter in reporters:
        if reporter.recognise(run_output):
            return reporter.write_page(run_output, out)
    kinds = "; or ".join(r.accepts for r in reporters) or "nothing (no installed domain writes reports)"
    raise UserError(f"{run_output} is not a run output that sci-diffusion can report on: expected {kinds}.")


def run_report(args: argparse.Namespace) -> int:
    """``report``: the page of ``args.run_output`` to ``args.out``; prints what it holds and its size."""
    print(write_report(args.run_output, args.out))
    return 0
