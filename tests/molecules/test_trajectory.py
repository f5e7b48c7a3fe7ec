"""Watching a sample form (issue 14 §6): `sample molecules --trajectory --trajectory-png`, and the
first-batch callback of `sample_molecules` underneath it."""
import json

import pytest
import torch

from sci_diffusion.checkpoints import load_module
from sci_diffusion.cli import main
from sci_diffusion_molecules.chem.files import read_molecules
from sci_diffusion_molecules.generation.sampling import sample_molecules
from sci_diffusion_molecules.generation.trajectory import TrajectoryRecorder, strip_frames
from sci_diffusion_molecules.models.latent import LatentMoleculeDiffusion


def frames_by_molecule(path):
    """``{molecule: [(z, pos, properties), ...]}`` of a trajectory file, in file order."""
    out = {}
    for z, pos, props in read_molecules(path):
        out.setdefault(int(props["molecule"]), []).append((z, pos, props))
    return out


def test_the_trajectory_has_a_frame_per_step_and_ends_on_the_written_molecule(tiny_checkpoint, tmp_path):
    out, traj = tmp_path / "m.xyz", tmp_path / "traj.xyz"
    assert main(["sample", "molecules", "--ckpt", str(tiny_checkpoint), "--num", "5", "--steps", "6", "--batch-size", "4",
                 "--no-novelty", "--no-progress", "--out", str(out), "--trajectory", str(traj),
                 "--trajectory-molecules", "3", "--trajectory-png", str(tmp_path / "strip.png")]) == 0
    written = read_molecules(out)
    for path, state in ((traj, "x_t"), (tmp_path / "traj.x0.xyz", "x0")):
        molecules = frames_by_molecule(path)
        assert sorted(molecules) == [0, 1, 2]
        for k, frames in molecules.items():
            assert [int(p["step"]) for _, _, p in frames] == list(range(1, 7))
            times = [float(p["t"]) for _, _, p in frames]
            assert times == sorted(times, reverse=True) and times[-1] == 0 and {p["state"] for _, _, p in frames} == {state}
            assert all(len(z) == len(written[k][0]) for z, _, _ in frames)
            if state == "x_t":
                z, pos, _ = frames[-1]
                assert (z == written[k][0]).all() and abs(pos - written[k][1]).max() < 1e-6  # the writer's 8 decimals
                assert abs(frames[0][1] - pos).max() > 0.1  # the molecule moved: not one frame repeated
    x_t, x0 = frames_by_molecule(traj)[0], frames_by_molecule(tmp_path / "traj.x0.xyz")[0]
    assert abs(x_t[0][1] - x0[0][1]).max() > 1e-3  # the state and the data estimate differ while it forms
    assert (tmp_path / "strip.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "m.xyz.json").read_text())["trajectory"]
    assert summary["molecules"] == 3 and summary["frames_per_molecule"] == 6 and summary["png"] == str(tmp_path / "strip.png")


def test_the_trajectory_works_under_classifier_free_guidance(conditional_checkpoint, classifier_checkpoint, tmp_path):
    out, traj = tmp_path / "g.xyz", tmp_path / "g_traj.xyz"
    assert main(["sample", "molecules", "--ckpt", str(conditional_checkpoint), "--classifier", str(classifier_checkpoint),
                 "--condition", "gap=6.5", "--guidance", "2", "--num", "3", "--steps", "3", "--batch-size", "4",
                 "--no-novelty", "--no-progress", "--out", str(out), "--trajectory", str(traj)]) == 0
    molecules, written = frames_by_molecule(traj), read_molecules(out)
    assert sorted(molecules) == [0, 1]  # guidance halves the batch: the first one holds 2 molecules
    for k, frames in molecules.items():
        assert len(frames) == 3 and abs(frames[-1][1] - written[k][1]).max() < 1e-6


def test_the_callback_sees_the_first_batch_only_with_its_layout(tiny_checkpoint):
    module = load_module(tiny_checkpoint, domain="molecules")
    calls = []

    def callback(i, t, x_t, x0, counts):
        calls.append((i, t, x_t.shape, x0.shape, list(counts)))

    list(sample_molecules(module, [5, 7, 6, 4], "ddim", 4, torch.Generator().manual_seed(0), batch_size=2,
                          callback=callback))
    assert [c[0] for c in calls] == [0, 1, 2, 3] and calls[-1][1] == 0.0
    assert all(c[4] == [5, 7] and c[2] == c[3] == (12, 9) for c in calls)


def test_a_latent_trajectory_is_decoded_to_atoms_and_ends_on_the_sample():
    torch.manual_seed(0)
    model = LatentMoleculeDiffusion(hidden=16, layers=2, decoder_layers=1, ema_decay=0, val_molecules=0).eval()
    recorder = TrajectoryRecorder(model, molecules=2)
    molecules = list(sample_molecules(model, [4, 6, 5], "dpmpp2m", 3, torch.Generator().manual_seed(0),
                                      precision="fp32", callback=recorder))
    assert recorder.recorded == 2
    for k in range(2):
        frames = recorder.frames["x_t"][k]
        assert [f.step for f in frames] == [1, 2, 3] and frames[-1].pos.shape == (len(molecules[k][0]), 3)
        assert (frames[-1].z == molecules[k][0]).all() and abs(frames[-1].pos - molecules[k][1]).max() < 1e-4


def test_strip_frames_are_evenly_spaced_and_keep_the_last():
    assert [f for f in strip_frames(list(range(50)))] == [0, 10, 20, 29, 39, 49]
    assert strip_frames([0, 1]) == [0, 1]


@pytest.mark.parametrize("argv, message", [
    (["--trajectory", "t.sdf"], "must end in .xyz"),
    (["--trajectory", "blocker/t.xyz"], "blocker is a file, not a folder"),
    (["--trajectory", "m.sdf/t.xyz"], "lies under the --out file"),
    (["--trajectory-molecules", "2"], "--trajectory-molecules needs --trajectory"),
    (["--trajectory", "t.xyz", "--trajectory-molecules", "9"], "the first batch holds 1 to 4 molecules"),
    (["--trajectory", "t.xyz", "--smiles", "CCO"], "--trajectory works with plain and conditional sampling, not with --smiles"),
    (["--trajectory-png", "blocker/s.png"], "--trajectory-png blocker/s.png cannot be written"),
])
def test_bad_trajectory_flags_get_one_sentence_and_exit_2_before_sampling(argv, message, tmp_path, capsys, monkeypatch,
                                                                          sampling_forbidden):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blocker").write_text("a file")
    assert main(["sample", "molecules", "--num", "4", "--out", "m.sdf", "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "m.sdf").exists()
