"""SDF/XYZ reading and writing, custom data sets, evaluate_file and the PNG grid."""

import json

import numpy as np
import pytest
from rdkit import Chem

from sci_diffusion_molecules.chem.elements import UnknownElementError
from sci_diffusion_molecules.chem.files import MoleculeFileError, MoleculeWriter, draw_grid_png, read_molecules
from sci_diffusion_molecules.data.custom_data import load_custom_molecules
from sci_diffusion_molecules.data.datamodule import QM9DataModule
from sci_diffusion_molecules.data.qm9 import PROPERTY_NAMES
from sci_diffusion_molecules.evaluation.evaluate_file import evaluate_file
from sci_diffusion_molecules.evaluation.metrics import evaluate_molecules

PROPS = {"sampler": "dpmpp2m", "steps": 50, "seed": 7, "checkpoint": "ab12cd", "SYNTHETIC": 1, "note": "a b"}


@pytest.fixture(scope="module")
def molecules(qm9):
    return [qm9.molecule(r) for r in range(200, 230)]


@pytest.mark.parametrize("suffix", [".sdf", ".xyz"])
def test_round_trip_keeps_elements_coordinates_and_properties(tmp_path, molecules, suffix):
    path = tmp_path / f"samples{suffix}"
    with MoleculeWriter(path, chunk_size=7) as writer:
        for i, (z, pos) in enumerate(molecules):
            writer.write(z, pos, {**PROPS, "index": i})
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no .partial left behind
    back = read_molecules(path)
    assert len(back) == len(molecules)
    for i, ((z, pos), (z2, pos2, props)) in enumerate(zip(molecules, back)):
        assert np.array_equal(z, z2)
        assert np.abs(pos - pos2).max() < 1e-4
        assert props == {k: str(v) for k, v in {**PROPS, "index": i}.items()}


def test_written_sdf_opens_in_rdkit_with_3d_coordinates_and_bonds(tmp_path, molecules):
    path = tmp_path / "samples.sdf"
    with MoleculeWriter(path) as writer:
        writer.write_many(molecules[:5])
    for mol in Chem.SDMolSupplier(str(path), removeHs=False):  # default: sanitized
        assert mol is not None and mol.GetNumBonds() > 0
        assert mol.GetConformer().Is3D()


def test_interrupted_writer_never_leaves_a_file_under_the_final_name(tmp_path, molecules):
    path = tmp_path / "samples.sdf"
    with pytest.raises(KeyboardInterrupt):
        with MoleculeWriter(path, chunk_size=4) as writer:
            for z, pos in molecules[:10]:
                writer.write(z, pos)
            raise KeyboardInterrupt
    assert not path.exists()
    assert len(read_molecules_from_partial(path)) == 10


def test_writer_refused_before_its_first_molecule_leaves_no_file(tmp_path):
    path = tmp_path / "samples.sdf"
    with pytest.raises(ValueError):
        with MoleculeWriter(path):
            raise ValueError("refused before sampling")
    assert list(tmp_path.iterdir()) == []


def read_molecules_from_partial(path):
    partial = path.with_name(path.name + ".partial")
    renamed = partial.with_name("salvaged" + path.suffix)
    partial.rename(renamed)
    return read_molecules(renamed)


def test_multi_frame_xyz_with_blank_lines_and_plain_comments(tmp_path):
    path = tmp_path / "frames.xyz"
    path.write_text("3\nwater from somewhere\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n\n2\nE=-1.0\nH 0 0 0\nH 0.74 0 0\n")
    frames = read_molecules(path)
    assert [f[0].tolist() for f in frames] == [[8, 1, 1], [1, 1]]
    assert frames[0][2] == {} and frames[1][2] == {"E": "-1.0"}


@pytest.mark.parametrize(
    "text, suffix",
    [
        ("2\n\nC 0 0 0\nSe 1.95 0 0\n", ".xyz"),
        (Chem.MolToMolBlock(Chem.AddHs(Chem.MolFromSmiles("C[SeH]")), includeStereo=False) + "$$$$\n", ".sdf"),
    ],
)
def test_unknown_element_error_names_the_element_and_the_file(tmp_path, text, suffix):
    path = tmp_path / f"selenium{suffix}"
    path.write_text(text)
    with pytest.raises(UnknownElementError, match=r"'Se'.*selenium"):
        read_molecules(path)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.sdf", None, "does not exist"),
        ("samples.pdb", "ATOM\n", "not an SDF or XYZ"),
        ("broken.xyz", "three\n\nC 0 0 0\n", "atom count"),
        ("short.xyz", "5\n\nC 0 0 0\n", "cut short"),
        ("broken.sdf", "not a molfile\n$$$$\n", "record 1"),
        ("nan.xyz", "1\n\nC nan 0 0\n", "not finite"),
    ],
)
def test_evaluate_file_rejects_bad_input_with_one_sentence_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        evaluate_file(path, tmp_path / "metrics.json")
    assert name in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("suffix, decimals", [(".sdf", 4), (".xyz", 8)])
def test_evaluate_file_writes_the_metrics_of_the_coordinates_it_reads(tmp_path, molecules, suffix, decimals):
    samples = tmp_path / f"samples{suffix}"
    with MoleculeWriter(samples) as writer:
        for z, pos in molecules:
            writer.write(z, pos, PROPS)
    out = tmp_path / "metrics.json"
    result = evaluate_file(samples, out)
    assert json.loads(out.read_text()) == result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", samples.name]
    # SDF (V2000) keeps 4 decimals, enough to move a bond sitting on a threshold.
    expected = evaluate_molecules((z, np.round(pos.astype(np.float64), decimals)) for z, pos in molecules)
    for key in ("n_molecules", "n_stable_atoms", "n_stable_molecules", "n_valid", "n_unique"):
        assert result[key] == expected[key]
    assert result["sample_properties"]["SYNTHETIC"] == "1"


def test_custom_folder_of_sdf_and_xyz_loads_into_the_datamodule(tmp_path, molecules):
    folder = tmp_path / "custom"
    with MoleculeWriter(folder / "a.sdf") as writer:
        writer.write_many(molecules[:15])
    with MoleculeWriter(folder / "sub" / "b.xyz") as writer:
        writer.write_many(molecules[15:])
    graphs = load_custom_molecules(folder)
    assert len(graphs) == len(molecules)
    present = {int(a) for z, _ in molecules for a in z}  # the covering element set, by default
    assert graphs[0].one_hot.shape == (len(molecules[0][0]), len(present)) and "y" not in graphs[0]
    dm = QM9DataModule(batch_size=8, source=str(folder))
    sizes = {name: len(d) for name, d in (dm.setup() or dm.datasets).items()}
    assert sizes == {"train": 28, "valid": 1, "test": 1}
    batch = next(iter(dm.train_dataloader()))
    assert batch.num_graphs == 8 and batch.pos.shape[1] == 3
    assert sum(dm.atom_count_histogram.values()) == 28


def test_custom_molecules_with_all_properties_get_y(tmp_path, molecules):
    path = tmp_path / "labelled.xyz"
    with MoleculeWriter(path) as writer:
        for z, pos in molecules[:3]:
            writer.write(z, pos, {name: 1.5 for name in PROPERTY_NAMES})
    graphs = load_custom_molecules(path)
    assert graphs[0].y.shape == (1, 6) and float(graphs[0].y[0, 0]) == 1.5


def test_custom_data_with_an_unknown_element_names_it(tmp_path):
    (tmp_path / "ok.xyz").write_text("2\n\nH 0 0 0\nH 0.74 0 0\n")
    (tmp_path / "bad.xyz").write_text("1\n\nSe 0 0 0\n")
    with pytest.raises(UnknownElementError, match=r"'Se'.*bad\.xyz"):
        load_custom_molecules(tmp_path)


def test_draw_grid_png_writes_a_png(tmp_path, molecules):
    path = tmp_path / "grid.png"
    draw_grid_png(molecules, path, n=6, mols_per_row=3, size=120)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(path).size == (360, 240)


def test_writer_refuses_an_unknown_suffix(tmp_path):
    with pytest.raises(MoleculeFileError, match="samples.pdb"):
        MoleculeWriter(tmp_path / "samples.pdb")
