"""Spreading work units over a fixed number of workers by size (pure; no Beam)."""

from __future__ import annotations

import heapq
from collections.abc import Sequence


def largest_first(sizes: Sequence[int]) -> list[int]:
    """Indexes of ``sizes``, largest first (ties, and sizes unknown as 0: as given): the order
    work is handed out in (``lpt_bins``, ``guided_groups``, the run's source queue, and the
    head start, so that what it takes ahead is what the workers take first)."""
    return sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))


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
    for i in largest_first(sizes):
        load, count, b = heapq.heappop(heap)
        out[i] = b
        heapq.heappush(heap, (load + sizes[i], count + 1, b))
    return out


def guided_groups(sizes: Sequence[int], groups: int, workers: int) -> list[list[int]]:
    """Items (indexes of ``sizes``) in up to ``groups`` groups that are handed out in order,
    each to the next worker that is free: largest items first, each group a share of what is
    left that shrinks as the groups go (guided self-scheduling: at least half a worker's share
    of the rest, ``rest / (2 x workers)``, and at least an equal share of the rest over the
    groups left), so the first groups are large and the last ones small (not strictly
    shrinking: a group of the equal shares can outweigh one before it), and the workers end
    close together. Every item in exactly one group, each group at least one item; fewer
    groups than asked when there are fewer items. Equal inputs give equal outputs."""
    if groups < 1 or workers < 1:
        raise ValueError(f"groups and workers must be at least 1, got {groups}, {workers}")
    order = largest_first(sizes)
    n = min(groups, len(order))
    out: list[list[int]] = []
    rest, taken = sum(sizes), 0
    for k in range(n):
        groups_left = n - k
        target = max(rest / (2 * workers), rest / groups_left)
        group, total = [order[taken]], sizes[order[taken]]
        taken += 1
        # an item more while the group is short of its share, leaving one for each group
        # after; the last group takes whatever is left
        while taken < len(order) and (
            groups_left == 1 or (total < target and len(order) - taken > groups_left - 1)
        ):
            group.append(order[taken])
            total += sizes[order[taken]]
            taken += 1
        out.append(group)
        rest -= total
    return out
