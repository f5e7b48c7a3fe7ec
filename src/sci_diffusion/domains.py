"""Domain plug-ins, found through the entry-point group ``sci_diffusion.domains``.

The core never imports a domain. A domain package exposes a :class:`Domain` object and
registers it in its ``pyproject.toml``::

    [project.entry-points."sci_diffusion.domains"]
    molecules = "sci_diffusion_molecules.domain:DOMAIN"

As in xarray's backends, plug-ins are discovered once and cached, and a broken one warns
instead of crashing the CLI.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

ENTRY_POINT_GROUP = "sci_diffusion.domains"


@dataclass
class Command:
    """One CLI verb of a domain.

    ``verb`` is the first CLI word. With ``target`` set the command is ``sci-diffusion VERB TARGET``
    (``sample molecules``); without it, the verb stands alone (``phantom``, ``translate``).
    ``add_arguments`` must stay cheap (no heavy imports); ``run`` does the work and returns an
    exit code (None means 0). ``run`` may be given as ``"package.module:function"``: it is imported only
    when the command runs, so ``sci-diffusion --help`` never imports torch or a domain's models, while
    the module that holds it imports what it needs at its top.
    """

    verb: str
    target: str | None
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None] | str

    def runner(self) -> Callable[[argparse.Namespace], int | None]:
        """``run``, imported first when it is given by name."""
        return _imported(self.run)


def _imported(function: Callable | str) -> Callable:
    """``function``, imported first when it is given by name (``"package.module:function"``)."""
    if callable(function):
        return function
    module, _, name = function.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass
class Reporter:
    """How ``sci-diffusion report`` turns a domain's run output into one HTML page.

    ``recognises(path) -> bool`` says, from file names and small JSON files only, whether ``path`` is a run output
    of this domain; ``write(path, out) -> str`` writes the page to ``out`` and returns one line saying what it
    holds (bad input: ``UserError``). Both may be named as ``"package.module:function"``, imported when the verb
    runs. ``accepts`` says in a few words what the domain's run outputs are, for the error message when no
    domain recognises a path.
    """

    accepts: str
    recognises: Callable[[Path], bool] | str
    write: Callable[[Path, Path], str] | str

    def recognise(self, path: Path) -> bool:
        return bool(_imported(self.recognises)(path))

    def write_page(self, path: Path, out: Path) -> str:
        return _imported(self.write)(path, out)


@dataclass
class Domain:
    """A domain plug-in: its name, its CLI commands and how it reports a run (None: it does not)."""

    name: str
    description: str
    commands: list[Command] = field(default_factory=list)
    reporter: Reporter | None = None


@functools.cache
def available_domains() -> dict[str, Domain]:
    """All installed domains by name; broken plug-ins are skipped with a warning."""
    found: dict[str, Domain] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            domain = ep.load()
        except Exception as exc:  # a broken plug-in must not take the CLI down
            warnings.warn(f"sci-diffusion domain {ep.name!r} could not be loaded ({type(exc).__name__}: {exc}).",
                          RuntimeWarning, stacklevel=2)
            continue
        if not isinstance(domain, Domain):
            warnings.warn(f"Entry point {ep.name!r} is not a sci_diffusion Domain; ignored.", RuntimeWarning, stacklevel=2)
            continue
        found[domain.name] = domain
    return found
