"""What the molecules tests share: real QM9 (the arrays and a first batch of six molecules), the helpers
that feed a denoiser a centred state, and tiny checkpoints trained once per test session on small
slices of the real QM9 halves: an unconditional model, a gap-conditioned generator (Db), a gap
classifier (Da) and a noise-aware gap regressor (Db). They are a few steps old: they test plumbing,
not quality."""
import importlib.util
from pathlib import Path

import lightning as L
import pytest
import torch
from torch_geometric.data import Batch

from sci_diffusion.checkpoints import bundled_checkpoint, load_module
from sci_diffusion_molecules.cli import sample as sample_verb
from sci_diffusion_molecules.data.atom_state import encode_atoms, molecule_space
from sci_diffusion_molecules.data.datamodule import QM9DataModule
from sci_diffusion_molecules.data.qm9 import load_qm9
from sci_diffusion_molecules.models.diffusion import MoleculeDiffusion
from sci_diffusion_molecules.models.property_model import PropertyPredictor

needs_tblite = pytest.mark.skipif(importlib.util.find_spec("tblite") is None,
                                  reason="tblite is not installed: pip install 'sci-diffusion[xtb]'")


@pytest.fixture(scope="session")
def qm9():
    """The QM9 arrays (all 130,831 molecules), read once per session."""
    return load_qm9()


@pytest.fixture(scope="session")
def bundled_model():
    """The bundled unconditional EDM-style model (``qm9_edm_small.ckpt``), in eval mode."""
    return load_module(bundled_checkpoint("sci_diffusion_molecules", "edm"), domain="molecules")


@pytest.fixture(scope="session")
def qm9_batch():
    """The first training batch of six real QM9 molecules (PyG ``Batch``)."""
    dm = QM9DataModule(batch_size=6, limit=50)
    dm.setup()
    return next(iter(dm.train_dataloader()))


def centred_state(batch) -> torch.Tensor:
    """The float64 atom state ``(N, 9)`` of a PyG batch, projected to zero centre of mass per molecule."""
    x = encode_atoms(batch.pos, batch.one_hot, batch.charges).double()
    return molecule_space(batch.batch, batch.num_graphs).project(x)


def predict(network, batch, x: torch.Tensor, t: float = 0.4) -> torch.Tensor:
    """A denoiser network's ``(EGNN, E3nnDenoiser)`` output for the state ``x`` of ``batch`` at time ``t``, unconditioned."""
    return network(x, torch.tensor(t, dtype=x.dtype), None, batch.batch, batch.num_graphs)


def permuted_first_molecule(qm9_batch):
    """``(original, permuted, perm)``: the batch's first molecule alone, and the same molecule with its atoms
    in the order ``perm`` (positions, types and charges moved together), each as a one-molecule Batch."""
    data = qm9_batch.get_example(0)
    perm = torch.randperm(data.num_nodes, generator=torch.Generator().manual_seed(0))
    permuted = data.clone()
    for key in ("pos", "z", "one_hot", "charges"):
        permuted[key] = data[key][perm]
    return Batch.from_data_list([data]), Batch.from_data_list([permuted]), perm


def fit_tiny(model: L.LightningModule, data: L.LightningDataModule, root: Path, steps: int = 3) -> Path:
    """Train ``steps`` steps and return the run's last checkpoint."""
    L.seed_everything(0)
    trainer = L.Trainer(max_steps=steps, default_root_dir=root, enable_progress_bar=False, limit_val_batches=0,
                        enable_model_summary=False, logger=False)
    trainer.fit(model, data)
    return Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"


@pytest.fixture
def sampling_forbidden(monkeypatch):
    """``sample molecules`` fails the test if it starts drawing molecules: for flags that must be refused first."""
    def never(*args, **kwargs):
        raise AssertionError("sampling started before the flags were checked")

    monkeypatch.setattr(sample_verb, "draw_molecules", never)  # where the verb looks it up (either kind of model)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An unconditional EGNN 2 x 16, three steps on 64 QM9 molecules: plumbing, not quality."""
    model = MoleculeDiffusion(hidden=16, layers=2, ema_decay=0.9, val_molecules=0)
    return fit_tiny(model, QM9DataModule(batch_size=16, limit=64), tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def conditional_checkpoint(tmp_path_factory) -> Path:
    model = MoleculeDiffusion(hidden=16, layers=2, ema_decay=0.9, conditioning=["gap"], val_molecules=0)
    return fit_tiny(model, QM9DataModule(batch_size=16, limit=64, subset="Db"), tmp_path_factory.mktemp("generator"))


@pytest.fixture(scope="session")
def classifier_checkpoint(tmp_path_factory) -> Path:
    model = PropertyPredictor(["gap"], hidden=16, layers=2)
    return fit_tiny(model, QM9DataModule(batch_size=16, limit=64, subset="Da"), tmp_path_factory.mktemp("classifier"))


@pytest.fixture(scope="session")
def regressor_checkpoint(tmp_path_factory) -> Path:
    model = PropertyPredictor(["gap"], hidden=16, layers=2, noise_aware=True, loss_type="l2")
    return fit_tiny(model, QM9DataModule(batch_size=16, limit=64, subset="Db"), tmp_path_factory.mktemp("regressor"))
