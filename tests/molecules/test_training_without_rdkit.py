"""Training runs where RDKit and qm9pack are absent, as on the lent GPU machine.

``scripts/device_resume_qm9.sh`` resumes QM9 runs on a machine that has PyTorch, Lightning and PyG
but neither RDKit nor qm9pack: there the QM9 cache built here is used as it is. An import of
RDKit at module level anywhere on the training path breaks it only there, where a session pays
for every minute, so this test trains a few steps in a Python whose imports of both are refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from rdkit import Chem

from sci_diffusion_molecules.chem.elements import ATOMIC_NUMBERS
from sci_diffusion_molecules.data.qm9 import default_cache_dir, load_qm9

REFUSE_IMPORTS = """
import sys
class _Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('rdkit', 'qm9pack'):
            raise ImportError(f'{name} is absent on this machine')
sys.meta_path.insert(0, _Refuse())
"""

TRAIN_A_FEW_STEPS = """
import lightning as L
from sci_diffusion_molecules.data.datamodule import QM9DataModule
from sci_diffusion_molecules.models.diffusion import MoleculeDiffusion
model = MoleculeDiffusion(hidden=16, layers=2, conditioning=['gap'], val_molecules=0)
data = QM9DataModule(batch_size=8, limit=32, subset='Db')
trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    limit_val_batches=1, enable_model_summary=False)
trainer.fit(model, data)
print('trained', trainer.global_step)
"""


def test_a_conditional_model_trains_where_rdkit_and_qm9pack_cannot_be_imported(tmp_path):
    load_qm9()  # the cache that machine is sent, built here where qm9pack is installed
    (tmp_path / "sitecustomize.py").write_text(REFUSE_IMPORTS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]),
               SCI_DIFFUSION_CACHE=str(default_cache_dir().parent))
    probe = subprocess.run([sys.executable, "-c", "import rdkit"], env=env, capture_output=True, text=True)
    assert "absent on this machine" in probe.stderr  # the refusal is in force
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(TRAIN_A_FEW_STEPS)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trained 2" in result.stdout


def test_the_written_out_atomic_numbers_are_rdkits():
    table = Chem.GetPeriodicTable()
    assert ATOMIC_NUMBERS == {symbol: table.GetAtomicNumber(symbol) for symbol in ATOMIC_NUMBERS}
