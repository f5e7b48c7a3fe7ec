"""Bad input, in every verb: one sentence that names the file and the problem, exit status 2, no
traceback, and nothing written. One row per case that issue 11 §4 lists."""
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sci_diffusion.cli import main

REPO = Path(__file__).resolve().parents[1]
BUNDLED_QM9 = REPO / "domains" / "molecules" / "checkpoints" / "qm9_edm_small.ckpt"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every bad input of the table below, built once."""
    from sci_diffusion_medical.data.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("bad")
    pair = write_phantom_dataset(root / "ph", 1, 4.0, seed=1)[0]
    img = nib.load(pair["mr"])
    data = np.asarray(img.dataobj, dtype=np.float32)
    (root / "notnifti.nii.gz").write_text("hello")
    raw = Path(pair["mr"]).read_bytes()
    (root / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), img.affine), root / "fourd.nii.gz")
    nan = data.copy()
    nan[10, 10, 10] = np.nan
    nib.save(nib.Nifti1Image(nan, img.affine), root / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(data.shape, np.uint8), img.affine), root / "emptymask.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.uint8), img.affine), root / "shapemask.nii.gz")
    moved = img.affine.copy()
    moved[0, 3] += 7
    nib.save(nib.Nifti1Image((data > 0).astype(np.uint8), moved), root / "affinemask.nii.gz")
    (root / "empty.sdf").write_text("")
    (root / "garbage.sdf").write_text("garbage\nnot an sdf\n")
    (root / "unknown_element.xyz").write_text("3\n\nC 0 0 0\nX 1 1 1\nH 0 1 0\n")
    (root / "nan.xyz").write_text("2\n\nC 0 0 nan\nH 0 1 0\n")
    (root / "unknown_key.yaml").write_text("model:\n  class_path: sci_diffusion_molecules.models.diffusion.MoleculeDiffusion\n"
                                           "  init_args:\n    hiden: 3\n")
    (root / "wrong_type.yaml").write_text("model:\n  class_path: sci_diffusion_molecules.models.diffusion.MoleculeDiffusion\n"
                                          "  init_args:\n    hidden: many\n")
    checkpoint = BUNDLED_QM9.read_bytes()
    (root / "truncated.ckpt").write_bytes(checkpoint[: len(checkpoint) // 3])
    (root / "a_file").write_text("keep me")
    no_mr = root / "synthrad_without_mr" / "1BA001"
    no_mr.mkdir(parents=True)
    for name in ("ct", "mask"):
        shutil.copy(pair[name], no_mr / f"{name}.nii.gz")
    return root, pair


CASES = {  # name: (argv with {root} and {mr}, words the one sentence must contain)
    "not NIfTI": (["translate", "--mr", "{root}/notnifti.nii.gz", "--out", "{root}/o.nii.gz"], "not a readable NIfTI"),
    "truncated NIfTI": (["translate", "--mr", "{root}/truncated.nii.gz", "--out", "{root}/o.nii.gz"], "could not be read"),
    "4-D MR": (["translate", "--mr", "{root}/fourd.nii.gz", "--out", "{root}/o.nii.gz"], "not a 3-D volume"),
    "NaN voxels": (["translate", "--mr", "{root}/nan.nii.gz", "--out", "{root}/o.nii.gz"], "NaN or infinite"),
    "empty mask": (["translate", "--mr", "{mr}", "--mask", "{root}/emptymask.nii.gz", "--out", "{root}/o.nii.gz"],
                   "empty mask"),
    "mask of another shape": (["translate", "--mr", "{mr}", "--mask", "{root}/shapemask.nii.gz",
                               "--out", "{root}/o.nii.gz"], "has shape"),
    "mask of another affine": (["translate", "--mr", "{mr}", "--mask", "{root}/affinemask.nii.gz",
                                "--out", "{root}/o.nii.gz"], "different affines"),
    "SynthRAD folder without mr": (["fit", "--config", str(REPO / "configs" / "medical" / "mri2ct_phantom.yaml"),
                                    "--data.root", "{root}/synthrad_without_mr"], "mr.nii.gz"),
    "empty SDF": (["evaluate", "molecules", "--samples", "{root}/empty.sdf", "--out", "{root}/o.json", "--no-novelty"],
                  "is empty"),
    "malformed SDF": (["evaluate", "molecules", "--samples", "{root}/garbage.sdf", "--out", "{root}/o.json",
                       "--no-novelty"], "not a readable SDF"),
    "unknown element": (["evaluate", "molecules", "--samples", "{root}/unknown_element.xyz", "--out", "{root}/o.json",
                         "--no-novelty"], "Unknown element 'X'"),
    "NaN coordinates": (["evaluate", "molecules", "--samples", "{root}/nan.xyz", "--out", "{root}/o.json",
                         "--no-novelty"], "not finite"),
    "too many atoms": (["sample", "molecules", "--atoms", "500", "--out", "{root}/o.sdf"], "out of range"),
    "unknown property": (["sample", "molecules", "--condition", "foo=1", "--out", "{root}/o.sdf"], "Unknown property"),
    "NaN target": (["sample", "molecules", "--condition", "gap=nan", "--out", "{root}/o.sdf"], "finite number"),
    "config with an unknown key": (["fit", "--config", "{root}/unknown_key.yaml"], "'hiden' is not accepted"),
    "config with a wrong type": (["fit", "--config", "{root}/wrong_type.yaml"], "model.hidden"),
    "checkpoint of the other domain": (["translate", "--mr", "{mr}", "--ckpt", str(BUNDLED_QM9),
                                        "--out", "{root}/o.nii.gz"], "'molecules' domain"),
    "truncated checkpoint": (["sample", "molecules", "--ckpt", "{root}/truncated.ckpt", "--out", "{root}/o.sdf"],
                             "not a readable PyTorch checkpoint"),
    "output under a file (molecules)": (["sample", "molecules", "--out", "{root}/a_file/o.sdf"], "is a file"),
    "output under a file (phantom)": (["phantom", "--subjects", "1", "--out", "{root}/a_file/ph"], "is a file"),
    "output under a file (translate)": (["translate", "--mr", "{mr}", "--out", "{root}/a_file/o.nii.gz"], "is a file"),
    "zero molecules": (["sample", "molecules", "--num", "0", "--out", "{root}/o.sdf"], "must be positive"),
    "negative subjects": (["phantom", "--subjects", "-1", "--out", "{root}/ph2"], "at least 1"),
    "zero samples": (["translate", "--mr", "{mr}", "--samples", "0", "--out", "{root}/o.nii.gz"], "at least 1"),
    "unknown time spacing (translate)": (["translate", "--mr", "{mr}", "--spacing", "karras", "--out", "{root}/o.nii.gz"],
                                         "invalid choice: 'karras'"),
    "unknown time spacing (molecules)": (["sample", "molecules", "--spacing", "2", "--out", "{root}/o.sdf"],
                                         "invalid choice: '2'"),
}


def without_logging_errors(err: str) -> str:
    """stderr without the "--- Logging error ---" reports that Python's logging prints when a handler
    Lightning made in an earlier test still points at that test's stderr, which pytest has closed:
    an artefact of capturing, not output of the command."""
    return re.sub(r"--- Logging error ---.*?Arguments: [^\n]*\n", "", err, flags=re.S)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_one_sentence_exit_2_and_no_output(case, files, capsys):
    root, pair = files
    argv, words = CASES[case]
    before = sorted(p.name for p in root.iterdir())
    code = main([a.format(root=root, mr=pair["mr"]) for a in argv])
    err = without_logging_errors(capsys.readouterr().err)
    errors = [line for line in err.splitlines() if line.startswith("sci-diffusion: error:")]
    assert code == 2, err
    assert len(errors) == 1 and words in errors[0] and "Traceback" not in err
    assert sorted(p.name for p in root.iterdir()) == before  # nothing written, nothing removed
    assert (root / "a_file").read_text() == "keep me"


def test_an_internal_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import sci_diffusion.demo as demo

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(demo, "run_demo", broken)  # the CLI imports the verb's runner by name when it runs
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: a bug" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(RuntimeError, match="a bug"):
        main(["demo", "--debug"])
