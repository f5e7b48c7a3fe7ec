#!/usr/bin/env bash
# Train the conditional protocol's evaluation classifiers (issue 29 §1; EDM's recipe on Da,
# configs/molecules/qm9_property_classifier.yaml) one after another, each on its CPU-time budget, resuming
# whatever an earlier session left. Run it in a work folder that survives between sessions:
#   cd WORK && OMP_NUM_THREADS=1 nohup nice -n 5 /path/to/repo/scripts/train_evaluation_classifiers.sh &
# For each property (default: alpha homo lumo mu Cv; the gap classifier is bundled), in order:
#   - its finished export benchmarks/resume/qm9_property_classifier_<p>.ckpt is committed: skip it;
#   - its run folder runs/qm9_property_classifier_<p>/ holds a last.ckpt: resume it (--ckpt_path last); a run
#     that has spent its budget stops at its first step, and the next property starts;
#   - else a whole mid-way checkpoint benchmarks/resume/qm9_property_classifier_<p>_last.ckpt (a machine that lost WORK);
#   - else from scratch.
# Learning rates are EDM's: 1e-3 for homo and lumo (and gap), 5e-4 for alpha, mu and Cv. On a CPU without
# bf16 instructions (no avx512_bf16 / amx_tile in /proc/cpuinfo) it trains in fp32.
# Usage: scripts/train_evaluation_classifiers.sh [PROPERTY ...]
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
SCI_DIFFUSION=${SCI_DIFFUSION:-sci-diffusion}
CPUINFO=${CPUINFO:-/proc/cpuinfo}
properties=("$@")
[ ${#properties[@]} -gt 0 ] || properties=(alpha homo lumo mu Cv)
precision=()
grep -qE "avx512_bf16|amx_tile" "$CPUINFO" 2>/dev/null || precision=(--trainer.precision 32-true)
rate() {  # EDM's learning rate of a property, or nothing for an unknown one
    case $1 in homo|lumo|gap) echo 1.0e-3 ;; alpha|mu|Cv) echo 5.0e-4 ;; esac
}
for p in "${properties[@]}"; do  # every name checked before any training starts
    [ -n "$(rate "$p")" ] || { echo "unknown property '$p': choose from alpha, gap, homo, lumo, mu, Cv" >&2; exit 2; }
done
for p in "${properties[@]}"; do
    lr=$(rate "$p")
    name=qm9_property_classifier_$p
    resume=()
    if [ -f "$repo/benchmarks/resume/$name.ckpt" ]; then  # finished and exported (sci-diffusion export)
        echo "$p: done, exported to benchmarks/resume/$name.ckpt"; continue
    elif compgen -G "runs/$name/version_*/checkpoints/last*.ckpt" > /dev/null; then
        resume=(--ckpt_path last)
    elif [ -f "$repo/benchmarks/resume/${name}_last.ckpt" ]; then
        resume=(--ckpt_path "$repo/benchmarks/resume/${name}_last.ckpt")
    fi
    echo "$(date -u +%FT%TZ) $p: lr $lr ${resume[*]:-from scratch}"
    "$SCI_DIFFUSION" fit --config "$repo/configs/molecules/qm9_property_classifier.yaml" \
        --model.init_args.properties "[$p]" --model.init_args.lr "$lr" \
        --trainer.logger.init_args.name "$name" "${precision[@]}" "${resume[@]}" || exit $?
done
