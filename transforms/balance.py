"""Spreading work units over a fixed number of workers by size (pure; no Beam)."""

from __future__ import annotations

import heapq
from collections.abc import Sequence


def lpt_bins(sizes: Sequence[int], bins: int) -> list[int]:
    """The bin (0 .. bins-1) of each item: largest first, each to the bin with the least total
    so far (ties: the bin with the fewest items, then the lowest), Graham's LPT rule, whose
    largest bin is within 4/3 of the best possible. When every size is 0 the items are dealt
    out by count; items of size 0 among larger ones go to the least loaded bins.
    Items keep their order in the result; equal inputs give equal outputs."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    heap = [(0, 0, b) for b in range(bins)]
    out = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        load, count, b = heapq.heappop(heap)
        out[i] = b
        heapq.heappush(heap, (load + sizes[i], count + 1, b))
    return out
