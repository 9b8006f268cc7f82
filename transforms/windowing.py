"""Cut a document longer than ``seq_len`` into consecutive windows; no token is lost.

Windows start every ``stride = seq_len - overlap`` tokens; every window but the last holds
exactly ``seq_len`` tokens and the last one ends at the document's end, so consecutive windows
share exactly ``overlap`` tokens and together cover ``[0, n_tokens)``. Example, seq_len=4::

    n=10, overlap=0:  [0,4) [4,8) [8,10)
    n=10, overlap=1:  [0,4) [3,7) [6,10)
    n=4:              [0,4)              (a document that fits is never split)
"""

from __future__ import annotations

import numpy as np


def window_document(
    n_tokens: int, *, seq_len: int, overlap: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(starts, lengths)`` (int64 arrays) of the windows of a document.

    >>> s, l = window_document(10, seq_len=4, overlap=1); s.tolist(), l.tolist()
    ([0, 3, 6], [4, 4, 4])
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len must be > 0, got {seq_len}")
    if not 0 <= overlap < seq_len:
        raise ValueError(f"overlap must satisfy 0 <= overlap < seq_len ({seq_len}), got {overlap}")
    if n_tokens <= 0:
        raise ValueError(f"a document has at least one token, got n_tokens={n_tokens}")
    if n_tokens <= seq_len:
        return np.zeros(1, np.int64), np.full(1, n_tokens, np.int64)
    stride = seq_len - overlap
    n_windows = 1 + -(-(n_tokens - seq_len) // stride)  # ceil
    starts = np.arange(n_windows, dtype=np.int64) * stride
    lengths = np.minimum(starts + seq_len, n_tokens) - starts
    return starts, lengths
