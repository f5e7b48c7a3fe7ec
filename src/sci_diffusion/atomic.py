"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

A crash or a bad input mid-way never leaves a half-written file under the final name, and never
destroys what was there before.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``.

    ``suffix`` keeps an extension that a writer needs to see (e.g. ``.nii.gz``, ``.png``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial" + suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_writable(path: str | os.PathLike, flag: str = "--out") -> None:
    """Raise ``UserError`` (one sentence) if ``path`` could not be written: a folder on its way is a
    file, or the nearest existing folder is not writable. Called before any work starts, so that a
    long run never ends in a failed write."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name.")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{flag} {path} cannot be written: {parent} is a file, not a folder.")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"{flag} {path} cannot be written: {parent} is not writable.")
            return


def json_safe(value: Any) -> Any:
    """Plain JSON values: NumPy scalars and arrays become Python ones, paths strings, and
    non-finite floats null (JSON has no NaN or Infinity)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # NumPy scalars and arrays, tensors
        return json_safe(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, strict JSON (see :func:`json_safe`), atomically. Returns the path."""
    text = json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
