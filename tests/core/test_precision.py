"""`--precision auto`: bfloat16 autocast only where the processor computes bf16 natively."""
from pathlib import Path

import pytest

from sci_diffusion import precision


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (first processor), read independently of PyTorch."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads Linux's /proc/cpuinfo")
def test_fast_bf16_agrees_with_the_kernels_cpu_flags():
    """PyTorch's detection and the kernel's flags name the same instructions (AVX512-BF16 or AMX-BF16)."""
    flags = cpu_flags()
    assert precision.has_fast_bf16("cpu") == bool({"avx512_bf16", "amx_bf16"} & flags)


@pytest.mark.parametrize("fast, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_resolves_to_bf16_exactly_where_it_is_fast(monkeypatch, fast, expected):
    monkeypatch.setattr(precision, "has_fast_bf16", lambda device_type="cpu": fast)
    assert precision.resolve_precision("auto") == expected
    assert precision.resolve_precision("bf16") == "bf16" and precision.resolve_precision("fp32") == "fp32"


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="auto, bf16, fp32"):
        precision.resolve_precision("fp16")
