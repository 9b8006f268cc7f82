"""Best-fit-decreasing packing of pieces (<= seq_len tokens) into samples.

Every piece goes whole into one sample, so a document that fits is never split, and a
sample's segments never interleave. Pieces of exactly ``seq_len`` tokens (full windows) are
samples of their own. The rest are sorted by length, longest first (ties: document id, then
offset, so the result is deterministic), and each goes into the open sample with the *least*
free room that still fits it, or a new sample. BFD uses at most 11/9 OPT + 1 bins; on real
corpora (many short documents) it lands within a fraction of a percent of the lower bound
ceil(total tokens / seq_len).

Finding the best open sample is a query on a segment tree over free capacities
(0..seq_len), O(log seq_len) per piece, never a scan over open samples; except for a call of
at most ``SCAN_MAX`` pieces, where a scan gives the same samples sooner than the tree is made.

Example, seq_len=10::

    pieces (doc, start, length): a:7  b:5  c:4  d:3  e:1
    a -> sample 0 (free 3); b -> sample 1 (free 5); c -> sample 1 (free 1, best fit);
    d -> sample 0 (free 0); e -> sample 1 (free 0)
    samples: [[a, d], [b, c, e]]
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import NamedTuple


class Piece(NamedTuple):
    doc_id: str
    start: int
    length: int


class _CapacityIndex:
    """Multiset of free capacities in [0, max_cap]; finds the smallest capacity >= x."""

    def __init__(self, max_cap: int):
        size = 1
        while size < max_cap + 1:
            size *= 2
        self.size = size
        self.tree = [0] * (2 * size)

    def add(self, cap: int, delta: int) -> None:
        i = cap + self.size
        tree = self.tree
        while i:
            tree[i] += delta
            i //= 2

    def first_at_least(self, x: int) -> int:
        """Smallest stored capacity >= x, or -1 when none."""
        tree, i = self.tree, x + self.size
        if tree[i] > 0:
            return x
        while i > 1:
            if i % 2 == 0 and tree[i + 1] > 0:
                i += 1
                break
            i //= 2
        else:
            return -1
        while i < self.size:
            i = 2 * i if tree[2 * i] > 0 else 2 * i + 1
        return i - self.size


def pack_best_fit(pieces: Sequence[Piece], *, seq_len: int) -> list[list[Piece]]:
    """Pack pieces into samples of at most ``seq_len`` tokens (best-fit decreasing).

    >>> ps = [Piece("a", 0, 7), Piece("b", 0, 5), Piece("c", 0, 4), Piece("d", 0, 3), Piece("e", 0, 1)]
    >>> [[p.doc_id for p in s] for s in pack_best_fit(ps, seq_len=10)]
    [['a', 'd'], ['b', 'c', 'e']]
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len must be > 0, got {seq_len}")
    for p in pieces:
        if not 0 < p.length <= seq_len:
            raise ValueError(
                f"piece {p.doc_id}@{p.start} has {p.length} tokens; pieces must hold "
                f"1..seq_len ({seq_len}) tokens: window documents before packing"
            )
    order = sorted(pieces, key=lambda p: (-p.length, p.doc_id, p.start))
    place = _scan_best_fit if len(order) <= SCAN_MAX else _indexed_best_fit
    return place(order, seq_len)


# Up to this many pieces a scan of the open samples finds the best fit sooner than the index is
# built: the index is a list of 2 x 2^17 counters at --seq-len 65536 (~0.18 ms to make and free),
# and pack_related calls this once per source at its first level. 458 sources, 300 MB: 0.22 s
# of the whole-corpus plan, on the run's path after the tokenize stage, went to those lists.
SCAN_MAX = 64


def _scan_best_fit(order: Sequence[Piece], seq_len: int) -> list[list[Piece]]:
    """Best fit by a scan of the open samples: for each piece the one with the least free room
    that still fits it, the lowest sample id among equals (what :func:`_indexed_best_fit`
    gives); ``order`` sorted as :func:`pack_best_fit` sorts it."""
    samples: list[list[Piece]] = []
    free: list[int] = []
    for piece in order:
        best = -1
        for sid, room in enumerate(free):
            if room >= piece.length and (best < 0 or room < free[best]):
                best = sid
        if best < 0:
            samples.append([piece])
            free.append(seq_len - piece.length)
        else:
            samples[best].append(piece)
            free[best] -= piece.length
    return samples


def _indexed_best_fit(order: Sequence[Piece], seq_len: int) -> list[list[Piece]]:
    """Best fit through the segment tree over free capacities (O(log seq_len) a piece)."""
    samples: list[list[Piece]] = []
    free: list[int] = []
    index = _CapacityIndex(seq_len)
    by_cap: dict[int, list[int]] = {}  # free capacity -> heap of sample ids (lowest id first)
    for piece in order:
        if piece.length == seq_len:
            samples.append([piece])
            free.append(0)
            continue
        cap = index.first_at_least(piece.length)
        if cap < 0:
            sid = len(samples)
            samples.append([piece])
            free.append(seq_len - piece.length)
        else:
            sid = heapq.heappop(by_cap[cap])
            index.add(cap, -1)
            samples[sid].append(piece)
            free[sid] = cap - piece.length
        if free[sid] > 0:
            heapq.heappush(by_cap.setdefault(free[sid], []), sid)
            index.add(free[sid], +1)
    return samples


def pack_related(
    pieces: Sequence[Piece],
    levels: Sequence[dict[str, str]],
    *,
    seq_len: int,
    keep_fill: float = 0.99,
) -> list[list[Piece]]:
    """Pack so that pieces sharing a sample are related where that costs (almost) nothing.

    ``levels`` maps each document id to a key, narrowest first, e.g.
    ``[{doc: source}, {doc: "book:english"}]``. At each level the pieces are packed with
    best-fit decreasing *within* each key; a sample at least ``keep_fill`` full is final, the
    pieces of the others go on to the next, wider level. A last level packs what is left all
    together, so the sample count stays within a few samples of plain BFD. Segments are never
    interleaved and ``seq_lengths`` keeps them apart whatever their relation.

    >>> ps = [Piece("a1", 0, 6), Piece("b1", 0, 6), Piece("a2", 0, 4), Piece("b2", 0, 4)]
    >>> kind = {"a1": "A", "a2": "A", "b1": "B", "b2": "B"}
    >>> [[p.doc_id for p in s] for s in pack_related(ps, [kind], seq_len=10)]
    [['a1', 'a2'], ['b1', 'b2']]
    """
    final: list[list[Piece]] = []
    carry = list(pieces)
    for level in levels:
        groups: dict[str, list[Piece]] = {}
        for p in carry:
            groups.setdefault(level.get(p.doc_id, ""), []).append(p)
        carry = []
        for key in sorted(groups):
            for sample in pack_best_fit(groups[key], seq_len=seq_len):
                if sum(p.length for p in sample) >= keep_fill * seq_len:
                    final.append(sample)
                else:
                    carry.extend(sample)
    final.extend(pack_best_fit(carry, seq_len=seq_len))
    # Deterministic sample order: by the first piece's (document, offset).
    final.sort(key=lambda s: (s[0].doc_id, s[0].start))
    return final


def fill_free_room(
    samples: Sequence[Sequence[Piece]],
    splittable: set[str],
    *,
    seq_len: int,
    min_piece: int = 256,
) -> list[list[Piece]]:
    """Fewer samples by cutting pieces of documents that are split anyway (``--fill-gaps``).

    The emptiest samples whose pieces all come from ``splittable`` documents (longer than
    ``seq_len``) are removed, as many as the free room of the remaining samples can take, and
    their pieces are poured into that room, largest room first, cut where a room ends. No room
    smaller than ``min_piece`` tokens is used, so no fragment is shorter than that except a
    piece's own last part. Documents that fit are never cut: they are not ``splittable``.

    >>> ps = [[Piece("long", 0, 10)], [Piece("a", 0, 6)], [Piece("b", 0, 6)], [Piece("long", 10, 6)]]
    >>> fill_free_room(ps, {"long"}, seq_len=10, min_piece=1)
    [[Piece(doc_id='long', start=0, length=10)], [Piece(doc_id='a', start=0, length=6), Piece(doc_id='long', start=10, length=4)], [Piece(doc_id='b', start=0, length=6), Piece(doc_id='long', start=14, length=2)]]
    """
    fills = [sum(p.length for p in s) for s in samples]
    movable = sorted(
        (i for i, s in enumerate(samples) if s and all(p.doc_id in splittable for p in s)),
        key=lambda i: (fills[i], i),
    )
    room = sum(seq_len - f for f in fills if seq_len - f >= min_piece)
    removed: set[int] = set()
    moved = 0
    for i in movable:  # take the emptiest while the others can still hold what was taken
        free_i = seq_len - fills[i]
        room_after = room - (free_i if free_i >= min_piece else 0)
        if moved + fills[i] > room_after:
            break
        removed.add(i)
        moved += fills[i]
        room = room_after
    if not removed:
        return [list(s) for s in samples]
    keep = [i for i in range(len(samples)) if i not in removed]
    out = {i: list(samples[i]) for i in keep}
    rooms = sorted(
        ((seq_len - fills[i], i) for i in keep if seq_len - fills[i] >= min_piece),
        key=lambda r: (-r[0], r[1]),
    )
    pour = sorted((p for i in removed for p in samples[i]), key=lambda p: (p.doc_id, p.start))
    r = 0
    extra: list[list[Piece]] = []  # only if the room left by partly used rooms runs out
    for p in pour:
        start, left = p.start, p.length
        while left:
            if r == len(rooms):
                extra.append([])
                rooms.append((seq_len, -len(extra)))
            free, sid = rooms[r]
            take = min(free, left)
            (out[sid] if sid >= 0 else extra[-sid - 1]).append(Piece(p.doc_id, start, take))
            start, left = start + take, left - take
            if free - take < min_piece:
                r += 1
            else:
                rooms[r] = (free - take, sid)
    return [out[i] for i in keep] + extra
