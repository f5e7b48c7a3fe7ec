#!/usr/bin/env bash
# Continue a QM9 training run (by default the bundled unconditional one) on a GPU machine that has
# PyTorch, Lightning, PyG and e3nn but neither qm9pack nor RDKit (the `device` machine of this
# workplace). It expects, beside the repository root, the ignored folder .gpu/ holding:
#   cache/qm9/qm9_v1.npz  the QM9 cache made by `load_qm9` (np.savez_compressed keeps it ~30 MB);
#   resume.ckpt           the full Lightning checkpoint to resume from;
#   whl/*.whl             jsonargparse, docstring_parser, typeshed_client (LightningCLI's needs).
# Usage: OUT=folder [CONFIG=configs/molecules/qm9_edm_small.yaml] [SECONDS_MORE=405] [BATCH=256]
#        [WORKERS=8] scripts/device_resume_qm9.sh
# Lightning's Timer resumes its clock from the checkpoint, so max_time is set to the training
# time already spent plus SECONDS_MORE. A CpuTimeBudget callback in the config is left out: on a
# GPU the wall clock is the budget, and each leg's length goes in checkpoints/README.md.
set -uo pipefail
OUT=${OUT:?set OUT to the folder for the results}
CONFIG=${CONFIG:-configs/molecules/qm9_edm_small.yaml}
SECONDS_MORE=${SECONDS_MORE:-405}
BATCH=${BATCH:-256}
WORKERS=${WORKERS:-8}
RUNS=${RUNS:-/tmp/device_runs}
root=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl || exit 1
mkdir -p /tmp/pkgs "$OUT"
ln -sfn "$root/domains/molecules" /tmp/pkgs/sci_diffusion_molecules
export PYTHONPATH="$root/src:/tmp/pkgs:/tmp/site" SCI_DIFFUSION_CACHE="$root/.gpu/cache" PYTHONUNBUFFERED=1
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__,
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" | tee "$OUT/fit.log"
echo "start $(date -u +%FT%TZ)" | tee -a "$OUT/fit.log"
# One Python start reads the checkpoint and the config:
# - LightningCLI lets a checkpoint's model hyperparameters override the command line, so the copy
#   resumed from has val_molecules = 0 (periodic sampling scores molecules with RDKit, absent here);
# - the Timer's elapsed training time gives max_time;
# - the config is copied without CpuTimeBudget, and its logger's name names the run folder.
read -r STEP MAX_TIME NAME < <(python3 -c "import torch, yaml
c = torch.load('.gpu/resume.ckpt', weights_only=False, map_location='cpu')
c['hyper_parameters']['val_molecules'] = 0; torch.save(c, '/tmp/resume.ckpt')
s = int(c['callbacks'].get('Timer', {}).get('time_elapsed', {}).get('train', 0)) + $SECONDS_MORE
cfg = yaml.safe_load(open('$CONFIG'))
cfg['trainer']['callbacks'] = [b for b in cfg['trainer'].get('callbacks', []) if not b['class_path'].endswith('CpuTimeBudget')]
yaml.safe_dump(cfg, open('/tmp/device_config.yaml', 'w'))
print(c['global_step'], f'00:{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}', cfg['trainer']['logger']['init_args']['name'])")
[ -n "${NAME:-}" ] || exit 1
echo "resuming $CONFIG at step $STEP, max_time $MAX_TIME" | tee -a "$OUT/fit.log"
python3 -m sci_diffusion.cli fit --config /tmp/device_config.yaml \
  --data.batch_size "$BATCH" --data.num_workers "$WORKERS" \
  --trainer.max_time "$MAX_TIME" --trainer.enable_progress_bar false --trainer.log_every_n_steps 200 \
  --trainer.logger.init_args.save_dir "$RUNS" \
  --ckpt_path /tmp/resume.ckpt 2>&1 | tee -a "$OUT/fit.log"
echo "end $(date -u +%FT%TZ) rc ${PIPESTATUS[0]}" | tee -a "$OUT/fit.log"
run=$(ls -d "$RUNS/$NAME"/version_* | tail -1)
cp "$run/checkpoints/last.ckpt" "$OUT/last.ckpt" && cp "$run/metrics.csv" "$OUT/metrics.csv"
python3 -c "import torch; c = torch.load('$OUT/last.ckpt', weights_only=False, map_location='cpu');
print('global_step', c['global_step'], 'epoch', c['epoch'])" | tee -a "$OUT/fit.log"
