"""What the report tests share: small real run outputs to draw pages from (molecules embedded by RDKit, written
as sample molecules writes them; a 4 mm head phantom with a synthetic CT beside it), and one headless Chromium
per test module, skipped in one line where none is installed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sci_diffusion_medical.data.phantom import write_phantom_dataset
from sci_diffusion_medical.io.images import read_volume
from sci_diffusion_medical.io.nifti import save_volume
from sci_diffusion_molecules.chem.files import MoleculeWriter
from sci_diffusion_molecules.evaluation.candidates import CandidateTable

from .browser import Chromium, find_chromium

SMILES = ["CCO", "c1ccccc1O", "CC(=O)NC", "OC1CC1C#N", "CCN(C)C=O", "N#CC1=CC=CN1", "CC1(O)CC1", "O=C1NC=CC1=O"]


def embedded(smiles: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A molecule's atomic numbers (N,) and RDKit ETKDG coordinates (N, 3) in Angstrom, hydrogens included."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=seed)
    return np.array([a.GetAtomicNum() for a in mol.GetAtoms()]), mol.GetConformer().GetPositions()


@pytest.fixture(scope="session")
def molecules_run(tmp_path_factory) -> Path:
    """A conditional sample molecules run's files: ``run.sdf`` (SYNTHETIC records with target and prediction of
    the gap), its candidates table ``run.csv`` (the real CandidateTable) and summary ``run.sdf.json``. The last
    molecule is scrambled (its atoms pushed together), so that the table has an invalid row."""
    root = tmp_path_factory.mktemp("molecules_run")
    table = CandidateTable(["gap"])
    with MoleculeWriter(root / "run.sdf") as writer:
        for k, smiles in enumerate(SMILES):
            z, pos = embedded(smiles, k)
            if k == len(SMILES) - 1:
                pos = pos * 0.6
            target, predicted = 6.5, 6.5 + 0.3 * (k - 3)
            writer.write(z, pos, {"sampler": "dpmpp2m_sde", "steps": 50, "SYNTHETIC": 1, "index": k,
                                  "target_gap": target, "predicted_gap": predicted, "unit_gap": "eV"})
            table.add(k, z, pos, [target], [predicted])
    table.write_csv(root / "run.csv")
    (root / "run.sdf.json").write_text(json.dumps({"samples": str(root / "run.sdf"), "sampler": "dpmpp2m_sde",
                                                   "steps": 50, "written": len(SMILES), "condition": {"gap": 6.5}}))
    return root


@pytest.fixture(scope="session")
def translated_phantom(tmp_path_factory) -> dict[str, Path]:
    """A 4 mm head phantom (``phantom/1BA001/{mr,ct,mask,labels}``) and beside it a stand-in for translate's output,
    ``sct/1BA001/sct.nii.gz`` (the CT plus noise of 40 HU; the page draws whatever volumes it is given) with its
    std volume and a sidecar naming the MR, mask and std as translate's does."""
    root = tmp_path_factory.mktemp("medical_run")
    write_phantom_dataset(root / "phantom", subjects=1, spacing_mm=4.0, seed=3)
    subject = root / "phantom" / "1BA001"
    ct, affine = read_volume(subject / "ct.nii.gz")
    rng = np.random.default_rng(0)
    sct = ct + rng.normal(0.0, 40.0, ct.shape).astype(np.float32)
    out = root / "sct" / "1BA001"
    std = np.abs(rng.normal(30.0, 10.0, ct.shape)).astype(np.float32)
    save_volume(std, affine, out / "sct_std.nii.gz", "SYNTHETIC std (HU)", sidecar={"synthetic": True})
    save_volume(sct, affine, out / "sct.nii.gz", "SYNTHETIC CT (HU) sci-diffusion MRI-to-CT", sidecar={
        "synthetic": True, "mr": str(subject / "mr.nii.gz"), "mask": str(subject / "mask.nii.gz"),
        "uncertainty": str(out / "sct_std.nii.gz"), "sampler": "ddim", "steps": 10, "samples": 4})
    return {"root": root, "sct": out / "sct.nii.gz", "phantom": root / "phantom"}


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium (the system's), or the test skipped in one line without one."""
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium on the PATH (apt-get install chromium): the report pages are not opened in a browser")
    pytest.importorskip("websocket", reason="websocket-client (the [dev] extra) drives Chromium; not installed")
    with Chromium(executable) as browser:
        yield browser
