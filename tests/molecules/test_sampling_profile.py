"""The sampling profile (benchmarks/molecules_sampling_profile.py): its clock times the functions it names and
puts them back, and one run's stages add up to the CLI's sampling loop, with one network pass per step and batch."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import molecules_sampling_profile as profile  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)


class Counter:
    def step(self, n: int) -> int:
        return n + 1


def test_the_clock_counts_calls_and_puts_the_function_back():
    clock, original = profile.StageClock(), Counter.step
    with clock.timing(Counter, "step", "network"):
        assert [Counter().step(i) for i in range(3)] == [1, 2, 3]
    assert clock.calls["network"] == 3 and clock.seconds["network"] > 0
    assert Counter.step is original


def test_the_stages_of_a_run_add_up_to_its_sampling_loop(tmp_path):
    row = profile.profile_setting(num=5, steps=3, sampler=None, ckpt=None, out_dir=tmp_path)
    assert row["network_passes"] == 3  # dpmpp2m_sde: one pass per step, the 5 molecules in one batch
    loop = sum(row["seconds"][s] for s in profile.STAGES)
    assert abs(loop - row["loop_seconds"]) < 2e-3  # the remainder closes the loop exactly (rounding only)
    assert all(row["seconds"][s] > 0 for s in ("network", "bonds and RDKit", "descriptors", "writing"))
    assert row["molecules_per_second"] == pytest.approx(5 / row["loop_seconds"], rel=0.02)  # the CLI's rounding
    assert profile.bond_egnn.BondEGNN.forward.__name__ == "forward"  # restored after the run
