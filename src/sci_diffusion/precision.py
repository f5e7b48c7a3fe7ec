"""Which arithmetic a network runs in when sampling: bfloat16 autocast where the processor has bf16
instructions, float32 elsewhere.

bfloat16 autocast halves the bytes of every matrix product, and on a CPU with AVX512-BF16 or AMX
(Intel Cooper Lake, Sapphire Rapids and later; AMD Zen 4 and later) it is the faster choice. On a
CPU without them oneDNN emulates bf16 with conversions around float32 products: slower than
float32 itself, and its per-shape kernels hold more memory (measured on a 2-core Xeon without
AVX512-BF16, the bond-aware molecule model: 26.8 s for 100 molecules at 50 steps under bf16, 17.7 s
in float32). ``auto`` picks the faster one for the machine it runs on.
"""
from __future__ import annotations

import torch

PRECISIONS = ("bf16", "fp32")  # what the samplers accept
PRECISION_CHOICES = ("auto", *PRECISIONS)  # what a command line accepts: auto is resolved before sampling


def has_fast_bf16(device_type: str = "cpu") -> bool:
    """Whether ``device_type``'s hardware computes bfloat16 matrix products natively.

    A CUDA device: ``torch.cuda.is_bf16_supported()``. A CPU: AVX512-BF16 or AMX tiles, as PyTorch's
    own CPU feature detection reports them (False on processors it does not inspect, such as ARM).
    """
    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)


def resolve_precision(name: str, device_type: str = "cpu") -> str:
    """``"bf16"`` or ``"fp32"``: ``name`` itself, or for ``"auto"`` bf16 exactly where :func:`has_fast_bf16`.

    Raises:
        ValueError: ``name`` is none of :data:`PRECISION_CHOICES`.
    """
    if name not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, not {name!r}.")
    if name == "auto":
        return "bf16" if has_fast_bf16(device_type) else "fp32"
    return name
