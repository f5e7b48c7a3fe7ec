"""``translate --mr FOLDER``: every subject of a SynthRAD-layout folder into ``<out>/<id>/sct.nii.gz``, or part K
of N of them (``--shard K/N``: a SLURM array task, a torchrun rank).

Each subject is translated exactly as ``translate --mr <id>/mr.nii.gz --mask <id>/mask.nii.gz`` with the same
flags would translate it (the same seed, so a part's volumes are the whole run's and the parts' folders together
are the run), with the model loaded once. ``evaluate mri2ct --pred <out>`` reads the layout back.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from sci_diffusion.atomic import write_json
from sci_diffusion.errors import UserError
from sci_diffusion.shards import parse_shard, shard_range

from ..data.pairs import find_synthrad_pairs
from .model import load_translation_model
from .options import TranslationOptions
from .translate import translate_file

SINGLE_FILE_OPTIONS = ("uncertainty", "png", "ct", "samples_out", "trajectory_png", "series")  # of TranslationOptions



def holds_subjects(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder of subjects (some ``<id>/mr.*`` below it), not one volume or DICOM series."""
    path = Path(path)
    return path.is_dir() and any(p.is_file() for p in path.glob("**/mr.*"))


def translate_folder(root: str | os.PathLike, out: str | os.PathLike, options: TranslationOptions,
                     shard: str | None = None, mask: str | os.PathLike | None = None) -> dict[str, Any]:
    """Translate the subjects of ``root`` (``data.pairs.find_synthrad_pairs``: ``<id>/mr.*``, a ``mask`` when
    present) into ``<out>/<id>/sct.nii.gz`` (with ``sct_std.nii.gz`` for ``samples >= 2``), part ``shard`` of them.

    Args:
        root: the subjects' folder.
        out: the output folder; ``<out>/translation.json`` records the run (subjects, part, seconds), a part's
            ``<out>/translation_part<K>of<N>.json``, so that the parts of a run may write into one folder.
        options: the translation's settings; the single-file ones (``SINGLE_FILE_OPTIONS``) must be unset.
        shard: ``K/N`` or None.
        mask: must be None (each subject's own ``mask`` is used); there only to be refused in one sentence.

    Raises:
        UserError: a single-file option, a bad ``--shard``, or a folder without subjects, in one sentence.
    """
    used = ["mask"] * (mask is not None) + [name for name in SINGLE_FILE_OPTIONS if getattr(options, name)]
    if used:
        flag = "--" + used[0].replace("_", "-")
        raise UserError(f"--mr is a folder of subjects, whose files are named <out>/<id>/sct.nii.gz (and sct_std.nii.gz "
                        f"for --samples >= 2); {flag} names one file, so translate one subject for it.")
    subjects = find_synthrad_pairs(root, require=("mr",))
    part = shard_range(parse_shard(shard, len(subjects), "subjects"), len(subjects))
    out = Path(out)
    module = load_translation_model(options.ckpt, options.device)
    start, written = time.perf_counter(), []
    for subject in subjects[part.start:part.stop]:
        folder = out / subject["id"]
        uncertainty = folder / "sct_std.nii.gz" if options.samples >= 2 else None
        translate_file(subject["mr"], folder / "sct.nii.gz", mask=subject.get("mask"),
                       options=replace(options, uncertainty=uncertainty, progress=False), module=module)
        written.append(subject["id"])
    record = {"subjects": written, "run_subjects": len(subjects), "seconds": round(time.perf_counter() - start, 1),
              "source": str(root)}
    name = "translation.json"
    if shard is not None:  # the parts may share one --out: each keeps its own record
        record["shard"] = shard
        name = "translation_part{}of{}.json".format(*shard.split("/"))
    write_json(out / name, record)
    return {**record, "record": str(out / name)}
