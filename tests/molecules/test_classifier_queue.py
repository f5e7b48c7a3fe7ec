"""scripts/train_evaluation_classifiers.sh trains the protocol's classifiers in order, each at EDM's rate, resuming
what a work folder holds (or alpha's committed checkpoint), in fp32 on a CPU without bf16 instructions. A stand-in
``sci-diffusion`` records each call instead of training."""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "train_evaluation_classifiers.sh"


def run_queue(tmp_path: Path, *properties: str, cpu_flags: str = "flags : avx512f amx_tile") -> tuple[int, list[str]]:
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fake-sci-diffusion"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(cpu_flags + "\n")
    env = {**os.environ, "SCI_DIFFUSION": str(fake), "CPUINFO": str(cpuinfo)}
    done = subprocess.run(["bash", str(SCRIPT), *properties], cwd=tmp_path, env=env, capture_output=True, text=True)
    return done.returncode, calls.read_text().splitlines() if calls.exists() else []


def test_each_property_in_order_at_edms_rate_resuming_what_the_folder_holds(tmp_path):
    last = tmp_path / "runs" / "qm9_property_classifier_homo" / "version_3" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    code, calls = run_queue(tmp_path)
    exported = [p for p in ("alpha", "homo", "lumo", "mu", "Cv")
                if (ROOT / "benchmarks" / "resume" / f"qm9_property_classifier_{p}.ckpt").is_file()]
    assert exported == ["alpha"]  # finished this stop and committed: the queue skips it
    assert code == 0 and len(calls) == 4
    names = [c.split("--trainer.logger.init_args.name ")[1].split()[0] for c in calls]
    assert names == [f"qm9_property_classifier_{p}" for p in ("homo", "lumo", "mu", "Cv")]
    rates = [c.split("--model.init_args.lr ")[1].split()[0] for c in calls]
    assert rates == ["1.0e-3", "1.0e-3", "5.0e-4", "5.0e-4"]
    assert "--ckpt_path last" in calls[0] and "--ckpt_path" not in calls[1]  # homo's run resumes, lumo's starts
    assert all(f"--model.init_args.properties [{n.rsplit('_', 1)[1]}]" in c and "precision" not in c
               for n, c in zip(names, calls))


def test_fp32_without_bf16_instructions_and_an_unknown_property_refused(tmp_path):
    code, calls = run_queue(tmp_path, "mu", cpu_flags="flags : avx2 avx512f")
    assert code == 0 and calls == [calls[0]] and "--trainer.precision 32-true" in calls[0]
    other = tmp_path / "other"
    other.mkdir()
    code, calls = run_queue(other, "mu", "gap_ev")
    assert code == 2 and calls == []  # nothing trained before the unknown name is found
