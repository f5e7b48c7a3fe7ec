"""Running a module's network through ``torch.compile`` (TorchInductor) while sampling.

On a CPU, a graph network's step is largely element-wise work on ``(E, hidden)`` edge tensors (adds,
SiLU, the bf16 casts of autocast) between its matrix products. Inductor fuses those into a few C++
loops, which also allocate fewer large temporaries. On the bundled gap model this gives about 1.1x the
molecules per second (``benchmarks/molecules_conditional.py --compile`` prints both rates), on the bond-aware
default 1.3x (``benchmarks/molecules_qm9.py --models ... --compile``: 43.3 against 33.7 at 20 steps on 2 cores). The first
call compiles (20-30 s on 2 cores with a cold cache; Inductor keeps the result in its on-disk cache,
so a later process on the same machine starts in seconds). Shapes are left to Dynamo's automatic dynamic
shapes: the first batch compiles with its own sizes, the first batch of other sizes compiles once more with
those sizes symbolic (the number of atoms and edges), and every later batch reuses that code.
``dynamic=True`` instead makes every size symbolic from the start, the state's width too, and with it
torch 2.13's Inductor miscompiles any six-block bond-aware network on the Xeon of 2026-12-07 (AVX-512,
no AMX; the CPU before it compiled the same code): an ``UnboundLocalError`` on one of its buffers, and with
``inplace_buffers`` off, coordinates 1.9 Angstrom off the plain network's.

Only inference uses it: the network's weights are not frozen into the code, so a compiled network is
the same function of the same parameters, up to float rounding.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

_COMPILED_ATTRIBUTE = "_sci_diffusion_compiled_forward"


def compiler_missing() -> str | None:
    """None when Inductor's CPU backend can build code here, else one sentence saying why not."""
    from torch._inductor import cpp_builder  # Inductor: seconds to import, and only --compile needs it

    compiler = cpp_builder.get_cpp_compiler()
    if shutil.which(compiler) is None:
        return (f"--compile needs a C++ compiler for torch.compile's CPU backend, and {compiler!r} is not on "
                "the PATH (install g++, or leave --compile out).")
    return None


@contextmanager
def compiled_forward(network: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Inside the block, ``network(...)`` runs its compiled forward; afterwards the plain one again.

    The compiled function is kept on the network, so a second block (the next benchmark row, the next
    batch of a run) compiles nothing new. ``enabled=False`` yields the network unchanged.

    Args:
        network: any ``nn.Module`` (the denoiser's ``module.net``).
        enabled: compile, or not.
    Raises:
        RuntimeError: no C++ compiler (the sentence of :func:`compiler_missing`).
    """
    if not enabled:
        yield network
        return
    problem = compiler_missing()
    if problem:
        raise RuntimeError(problem)
    compiled = getattr(network, _COMPILED_ATTRIBUTE, None)
    if compiled is None:
        compiled = torch.compile(network.forward)  # automatic dynamic shapes (module docstring)
        object.__setattr__(network, _COMPILED_ATTRIBUTE, compiled)
    network.forward = compiled  # an instance attribute: nn.Module.__call__ finds it before the class's forward
    try:
        yield network
    finally:
        del network.forward
