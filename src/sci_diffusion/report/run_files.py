"""Finding a run's files again from what it recorded: the paths in its JSON sidecars are relative to the folder
the run was started in, which the report may not be started in (or the outputs were moved as a folder)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError

SMALL_JSON_BYTES = 1_000_000  # a run's summary or metrics; anything larger is not one


def find_recorded_path(recorded: str | os.PathLike | None, near: Path) -> Path | None:
    """The file a run recorded as ``recorded``: as written (absolute, or relative to this folder), or else under
    ``near`` or a folder above it with the recorded path's leading folders dropped one by one (a run in ``/a``
    that wrote ``out/demo/phantom/mr.nii.gz``, moved to ``/b/demo``, is found as ``/b/demo/phantom/mr.nii.gz``).
    None when it is nowhere."""
    if not recorded:
        return None
    recorded = Path(recorded)
    if recorded.is_file():
        return recorded
    parts = recorded.parts[1:] if recorded.is_absolute() else recorded.parts
    for folder in [near, *near.parents]:
        for start in range(len(parts)):
            candidate = folder.joinpath(*parts[start:])
            if candidate.is_file():
                return candidate
    return None


def read_small_json(path: Path) -> dict | None:
    """A small JSON object (a run's summary, metrics or sidecar), or None if ``path`` is not one."""
    try:
        if not path.is_file() or path.stat().st_size > SMALL_JSON_BYTES:
            return None
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def require_json(path: Path) -> dict:
    """A run's JSON object, or one sentence saying why it is not one."""
    value = read_small_json(path)
    if value is None:
        raise UserError(f"{path} is not a readable JSON object of a run.")
    return value
