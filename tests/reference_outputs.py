"""A small case of the reference outputs of issue 27 ("nothing changes for a user"), run through the CLI only.

``python tests/reference_outputs.py OUT.json`` writes what the commands below produce today;
``tests/data/reference_outputs.json`` was written this way by the code before House II (commit b42df9a), and
``tests/test_reference_outputs.py`` checks that today's code still gives the same molecules (atoms equal,
coordinates within 1e-4 Angstrom) and volumes (within 0.5 HU). The commands use float32 (``--precision fp32``):
bfloat16 rounds differently on CPUs with and without native bf16, which would tie the file to one machine.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from sci_diffusion.cli import main

VOXEL_STRIDE = 97  # every 97th voxel of a volume (in C order) is kept: about 1,500 values for a 4 mm head


def run_commands(work: Path) -> dict[str, list[str]]:
    """Run the small case into ``work``; returns each output's command."""
    commands = {
        "unconditional": ["sample", "molecules", "--model", "edm", "--num", "8", "--seed", "0", "--steps", "5",
                          "--precision", "fp32", "--no-novelty", "--no-progress", "--out", str(work / "unconditional.sdf")],
        "gap": ["sample", "molecules", "--num", "4", "--seed", "0", "--steps", "5", "--precision", "fp32",
                "--condition", "gap=6.5", "--guidance", "2", "--no-novelty", "--no-progress", "--out", str(work / "gap.sdf")],
        "phantom": ["phantom", "--subjects", "1", "--spacing", "4", "--seed", "99", "--out", str(work / "phantom")],
        "translate": ["translate", "--mr", str(work / "phantom" / "1BA001" / "mr.nii.gz"), "--mask",
                      str(work / "phantom" / "1BA001" / "mask.nii.gz"), "--steps", "2", "--seed", "0", "--samples", "2",
                      "--uncertainty", str(work / "sct_std.nii.gz"), "--out", str(work / "sct.nii.gz")],
        "synthesize": ["synthesize", "medical", "--model", "slice", "--num", "1", "--seed", "0", "--steps", "3",
                       "--out", str(work / "synthetic")],  # the default before the 3-D latent generator
    }
    for name, argv in commands.items():
        if main(argv) != 0:
            raise RuntimeError(f"{name}: {' '.join(argv)} failed")
    return commands


def read_outputs(work: Path) -> dict:
    """The molecules (atomic numbers, positions in Angstrom) and strided voxels of the small case's outputs."""
    from sci_diffusion_molecules.chem.files import read_molecules  # the molecules extra: only when reading SDF

    molecules = {name: [{"z": [int(a) for a in z], "pos": np.round(pos, 6).tolist()} for z, pos, *_ in
                        read_molecules(work / f"{name}.sdf")] for name in ("unconditional", "gap")}
    volumes = {}
    for name in ("phantom/1BA001/ct", "phantom/1BA001/mr", "sct", "sct_std", "synthetic/1BS001/ct",
                 "synthetic/1BS001/mr", "synthetic/1BS001/labels"):
        data = np.asarray(nib.load(work / f"{name}.nii.gz").dataobj, dtype=np.float64)
        volumes[name] = {"shape": list(data.shape), "values": np.round(data.ravel()[::VOXEL_STRIDE], 3).tolist()}
    return {"molecules": molecules, "volumes": volumes}


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        commands = run_commands(Path(tmp))
        record = {"commands": {k: " ".join(v).replace(tmp, "OUT") for k, v in commands.items()}, **read_outputs(Path(tmp))}
    Path(sys.argv[1]).write_text(json.dumps(record))
