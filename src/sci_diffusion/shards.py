"""Parts of one run for many machines: ``--shard K/N`` (a SLURM array's task K of N, or a torchrun rank).

A run's items (molecules, synthetic subjects, input volumes) are numbered 0..num-1; part K of N takes the K-th of N
near-equal contiguous ranges. Each item draws from its own seed, so a part's items equal those of the whole run and
the parts' union is the run.
"""
from __future__ import annotations

from .errors import UserError


def parse_shard(text: str | None, total: int, items: str) -> tuple[int, int] | None:
    """``--shard K/N`` as ``(K, N)`` (None without one).

    Args:
        text: the flag's value.
        total: how many ``items`` the whole run has.
        items: what they are, for the message (``molecules``, ``subjects``).

    Raises:
        UserError: another form, K outside 0..N-1, or more parts than items (one would be empty).
    """
    if text is None:
        return None
    k_text, slash, n_text = text.partition("/")
    try:
        k, n = int(k_text), int(n_text)
    except ValueError:
        k = n = -1
    if not slash or n < 1 or not 0 <= k < n:
        raise UserError(f"--shard {text!r} should read K/N with 0 <= K < N, e.g. 0/4 for the first of four parts.")
    if n > total:
        raise UserError(f"--shard {text}: {n} parts of {total} {items} would leave some empty; use at most {total}.")
    return k, n


def shard_range(shard: tuple[int, int] | None, num: int) -> range:
    """The indices ``0..num-1`` that part ``shard`` ``(K, N)`` takes: the K-th of N near-equal ranges (all of
    them without a shard)."""
    if shard is None:
        return range(num)
    k, n = shard
    return range(k * num // n, (k + 1) * num // n)
