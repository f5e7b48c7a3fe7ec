"""Conformers of a given molecule (``--smiles``) and fragment growth (``--fix-atoms``) on the bundled EDM model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rdkit import Chem

from sci_diffusion.cli import main
from sci_diffusion_molecules.generation.conformers import (
    GraphRestrainedDenoiser,
    InpaintingTask,
    bound_violation,
    fragment_rmsd,
    generate_conformers,
    graph_bonds,
    inpaint_molecules,
    match_connectivity,
    molecule_from_smiles,
    perceived_bonds,
)


def test_the_bounds_refinement_reaches_the_graphs_connectivity():
    mols = [molecule_from_smiles("CCO"), molecule_from_smiles("c1ccccc1O")]
    refine = GraphRestrainedDenoiser(None, mols, copies=2, iterations=400)
    start = torch.randn(sum(m.GetNumAtoms() for m in mols) * 2, 3, generator=torch.Generator().manual_seed(0))
    pos = refine.restrain(start).numpy()
    offset = 0
    for mol in mols:
        for _ in range(2):
            p = pos[offset:offset + mol.GetNumAtoms()]
            offset += mol.GetNumAtoms()
            assert abs(p.mean(0)).max() < 1e-5  # every graph re-centred
            assert bound_violation(mol, p) < 0.1


def test_conformers_keep_the_molecule_and_its_connectivity(bundled_model):
    mol = molecule_from_smiles("CC(=O)NC")
    conformers = generate_conformers(bundled_model, [mol], copies=4, steps=20, generator=torch.Generator().manual_seed(0))[0]
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    kept = [perceived_bonds(z, p) == graph_bonds(mol) for p in conformers]
    assert len(conformers) == 4 and sum(kept) >= 3
    assert all(bound_violation(mol, p) < 0.3 for p in conformers)


def test_without_the_network_the_refinement_alone_is_the_ablation(bundled_model):
    """The same sampler without the model: connectivity from the bounds, but conformers that differ from the model's."""
    mol = molecule_from_smiles("CCO")
    model = generate_conformers(bundled_model, [mol], copies=2, steps=10, generator=torch.Generator().manual_seed(1))[0]
    alone = generate_conformers(None, [mol], copies=2, steps=10, generator=torch.Generator().manual_seed(1))[0]
    assert not np.allclose(model[0], alone[0], atol=1e-2)


def test_the_connectivity_check_accepts_a_relabelled_molecule_and_refuses_an_isomer():
    from rdkit.Chem import AllChem

    ethanol = molecule_from_smiles("CCO")
    AllChem.EmbedMolecule(ethanol, randomSeed=1)
    z = np.array([a.GetAtomicNum() for a in ethanol.GetAtoms()])
    pos = ethanol.GetConformer().GetPositions()
    order = np.random.default_rng(0).permutation(len(z))
    assert match_connectivity(ethanol, z[order], pos[order]) is not None
    ether = molecule_from_smiles("COC")
    AllChem.EmbedMolecule(ether, randomSeed=1)
    zz = np.array([a.GetAtomicNum() for a in ether.GetAtoms()])
    assert match_connectivity(ethanol, zz, ether.GetConformer().GetPositions()) is None


def test_smiles_cli_writes_conformers_with_the_input_bonds(tmp_path, capsys):
    out = tmp_path / "conformers.sdf"
    assert main(["sample", "molecules", "--smiles", "CCO", "--num", "3", "--steps", "10", "--out", str(out)]) == 0
    records = [m for m in Chem.SDMolSupplier(str(out), removeHs=False)]
    summary = json.loads((tmp_path / "conformers.sdf.json").read_text())
    assert len(records) == summary["written"] == 3 - summary["wrong_connectivity"]
    reference = molecule_from_smiles("CCO")
    for record in records:
        assert record.GetProp("SMILES") == "CCO" and record.GetProp("SYNTHETIC") == "1"
        assert Chem.MolToSmiles(record) == Chem.MolToSmiles(reference)
    printed = capsys.readouterr()
    assert "did not have the input's connectivity" in printed.out and "warning" not in printed.err


def test_a_molecule_larger_than_any_trained_on_is_written_with_a_warning(tmp_path, capsys):
    """80 carbons are 242 atoms with their hydrogens, eight times QM9's largest molecule (29 atoms)."""
    out = tmp_path / "big.sdf"
    assert main(["sample", "molecules", "--smiles", "C" * 80, "--num", "1", "--steps", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "242 atoms" in err and "(29 atoms)" in err and "8.3 times" in err


def test_a_fragment_keeps_its_atoms_and_place(bundled_model, tmp_path):
    from rdkit.Chem import AllChem

    fragment = molecule_from_smiles("C1=COC=N1")
    AllChem.EmbedMolecule(fragment, randomSeed=0)
    fragment = Chem.RemoveHs(fragment)
    path = tmp_path / "fragment.sdf"
    Chem.MolToMolFile(fragment, str(path))
    z_fragment = np.array([a.GetAtomicNum() for a in fragment.GetAtoms()])
    task = InpaintingTask.fragment(z_fragment, fragment.GetConformer().GetPositions(), atoms=12)
    grown = list(inpaint_molecules(bundled_model, task, 3, steps=10, resample=2, generator=torch.Generator().manual_seed(0)))
    for z, pos in grown:
        assert len(z) == 12 and np.array_equal(z[:5], z_fragment)
        assert fragment_rmsd(fragment.GetConformer().GetPositions(), pos) < 1e-3
    out = tmp_path / "grown.sdf"
    assert main(["sample", "molecules", "--fix-atoms", str(path), "--atoms", "12", "--num", "2", "--steps", "5",
                 "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "grown.sdf.json").read_text())
    assert summary["written"] == 2 and summary["max_fragment_rmsd_A"] < 1e-3


@pytest.mark.parametrize("extra, words", [
    (["--smiles", "CCS"], "contains S"),
    (["--smiles", "C1CC"], "not a SMILES"),
    (["--smiles", "CCO", "--atoms", "9"], "drop --atoms"),
    (["--smiles", "CCO", "--fix-atoms", "f.sdf"], "not both"),
    (["--fix-atoms", "missing.sdf"], "needs --atoms"),
    (["--fix-atoms", "missing.sdf", "--atoms", "10"], "does not exist"),
    (["--smiles", "CCO", "--condition", "gap=6"], "does not combine"),
])
def test_bad_inpainting_flags_get_one_sentence(extra, words, tmp_path, capsys):
    assert main(["sample", "molecules", "--num", "2", "--out", str(tmp_path / "x.sdf"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and words in err
    assert not (tmp_path / "x.sdf").exists()


def test_a_conformer_model_sees_the_given_types_clean_and_learns_positions_only():
    """types_given: the feature columns are known (clean in x_t, out of the loss), and the conformer
    denoiser hands the network the molecule's own features whatever the state holds there."""
    import torch

    from sci_diffusion_molecules.data.datamodule import QM9DataModule
    from sci_diffusion_molecules.generation.conformers import GraphRestrainedDenoiser, molecule_from_smiles
    from sci_diffusion_molecules.models.diffusion import MoleculeDiffusion

    dm = QM9DataModule(batch_size=4, limit=4)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    module = MoleculeDiffusion(hidden=16, layers=1, val_molecules=0, types_given=True)
    b = module.prepare_batch(batch)
    assert b.known is not None and b.known[0, :3].sum() == 0 and (b.known[0, 3:] == 1).all()
    seen = []

    def network(x, t, cond=None):
        seen.append(x.clone())
        return x

    mol = molecule_from_smiles("CCO")
    restrained = GraphRestrainedDenoiser(network, [mol], types_given=True)
    noisy = torch.randn(mol.GetNumAtoms(), 9)
    restrained(noisy, torch.tensor(0.5))
    assert torch.equal(seen[-1][:, 3:], restrained.features) and torch.equal(seen[-1][:, :3], noisy[:, :3])
    GraphRestrainedDenoiser(network, [mol])(noisy, torch.tensor(0.5))  # the plain model reads the state as it is
    assert torch.equal(seen[-1], noisy)


def test_a_conformer_model_without_smiles_is_refused_in_one_sentence(tmp_path, capsys):
    from sci_diffusion_molecules.data.datamodule import QM9DataModule
    from sci_diffusion_molecules.models.diffusion import MoleculeDiffusion

    from .conftest import fit_tiny

    ckpt = fit_tiny(MoleculeDiffusion(hidden=16, layers=1, val_molecules=0, types_given=True),
                    QM9DataModule(batch_size=8, limit=16), tmp_path, steps=1)
    assert main(["sample", "molecules", "--ckpt", str(ckpt), "--num", "2", "--out", str(tmp_path / "x.sdf")]) == 2
    assert "is a conformer model (atom types given): use it with --smiles." in capsys.readouterr().err
    assert main(["sample", "molecules", "--ckpt", str(ckpt), "--smiles", "CCO", "--num", "2", "--steps", "3",
                 "--out", str(tmp_path / "c.sdf")]) == 0
