"""Cut a document longer than ``seq_len`` into consecutive windows; no token is lost.

Without boundaries, windows start every ``stride = seq_len - overlap`` tokens; every window but
the last holds exactly ``seq_len`` tokens and the last one ends at the document's end, so
consecutive windows share exactly ``overlap`` tokens and together cover ``[0, n_tokens)``.
Example, seq_len=4::

    n=10, overlap=0:  [0,4) [4,8) [8,10)
    n=10, overlap=1:  [0,4) [3,7) [6,10)
    n=4:              [0,4)              (a document that fits is never split)

With ``tiers`` of boundaries (token offsets, best kind first: chapter or file starts, then
paragraph starts, then line starts) and ``slack`` > 0, a window may end up to ``slack`` tokens
early so that the next window starts at a boundary instead of mid-sentence: the latest offset
within reach of the first tier that has one wins, else the plain cut. Overlap and coverage are
unchanged; the cost is at most ``slack`` tokens of each window that the packer fills with
other documents. Example, seq_len=4, slack=1, tiers [[3]]::

    n=10:  [0,3) [3,7) [7,10)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def default_slack(seq_len: int) -> int:
    """The default ``--boundary-slack``: 1/32 of a window (2,048 tokens at 64K)."""
    return seq_len // 32


def window_document(
    n_tokens: int,
    *,
    seq_len: int,
    overlap: int = 0,
    tiers: Sequence[Sequence[int]] = (),
    slack: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(starts, lengths)`` (int64 arrays) of the windows of a document.

    >>> s, l = window_document(10, seq_len=4, overlap=1); s.tolist(), l.tolist()
    ([0, 3, 6], [4, 4, 4])
    >>> s, l = window_document(10, seq_len=4, tiers=[[3]], slack=1); s.tolist(), l.tolist()
    ([0, 3, 7], [3, 4, 3])
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len must be > 0, got {seq_len}")
    if not 0 <= overlap < seq_len:
        raise ValueError(f"overlap must satisfy 0 <= overlap < seq_len ({seq_len}), got {overlap}")
    if n_tokens <= 0:
        raise ValueError(f"a document has at least one token, got n_tokens={n_tokens}")
    if slack < 0:
        raise ValueError(f"slack must be >= 0, got {slack}")
    if n_tokens <= seq_len:
        return np.zeros(1, np.int64), np.full(1, n_tokens, np.int64)
    stride = seq_len - overlap
    slack = min(slack, (stride - 1) // 2)
    arrays = [np.asarray(t, dtype=np.int64) for t in tiers if len(t)]
    if slack == 0 or not arrays:
        n_windows = 1 + -(-(n_tokens - seq_len) // stride)  # ceil
        starts = np.arange(n_windows, dtype=np.int64) * stride
        lengths = np.minimum(starts + seq_len, n_tokens) - starts
        return starts, lengths
    starts = [0]
    ends = []
    s = 0
    while n_tokens - s > seq_len:
        hi = s + stride  # the plain next start
        lo = hi - slack
        nxt = hi
        for cands in arrays:
            k = np.searchsorted(cands, hi, side="right") - 1
            if k >= 0 and cands[k] >= lo:
                nxt = int(cands[k])
                break
        ends.append(nxt + overlap)
        starts.append(nxt)
        s = nxt
    ends.append(n_tokens)
    starts_a = np.asarray(starts, np.int64)
    return starts_a, np.asarray(ends, np.int64) - starts_a
