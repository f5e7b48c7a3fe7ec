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
        if callable(self.run):
            return self.run
        module, _, function = self.run.partition(":")
        return getattr(importlib.import_module(module), function)


@dataclass
class Domain:
    """A domain plug-in: its name and its CLI commands."""

    name: str
    description: str
    commands: list[Command] = field(default_factory=list)


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
