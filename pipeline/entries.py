"""Keys and bytes of a tokenized document's entry (``transforms/samples/entries.py`` makes the
entry): the ``--incremental`` cache (``pipeline/cache.py``), the read step's early tokenizer
(``pipeline/steps/early.py``) and the head start (``pipeline/head_start.py``, which runs
without Beam) store and find entries alike. No Beam here.

An entry is an ``.npz`` (loaded with ``allow_pickle=False``); a score of None is stored as NaN.
Its key is the SHA-256 of the document's content hash together with everything that shapes
its tokens and windows: tokenizer hash, ``--seq-len``, ``--overlap``, ``--boundary-slack`` and
the pipeline version.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid

import numpy as np

from pipeline import __version__


def entry_key(
    content_sha256: str, tokenizer_sha256: str, seq_len: int, overlap: int, slack: int
) -> str:
    spec = f"{content_sha256}|{tokenizer_sha256}|{seq_len}|{overlap}|{slack}|{__version__}"
    return hashlib.sha256(spec.encode()).hexdigest()


def document_key(content_sha256: str, tok, config) -> str:
    """:func:`entry_key` of a document under a run's tokenizer and settings."""
    return entry_key(content_sha256, tok.sha256, config.seq_len, config.overlap, config.slack)


def file_name(key: str) -> str:
    return f"{key}.npz"


def encode(entry: dict) -> bytes:
    arrays = dict(entry)
    score = arrays.pop("score")
    buf = io.BytesIO()
    np.savez(buf, score=np.float64(np.nan if score is None else score), **arrays)
    return buf.getvalue()


def decode(data: bytes) -> dict:
    loaded = np.load(io.BytesIO(data), allow_pickle=False)
    entry = {k: loaded[k] for k in loaded.files}
    score = float(entry["score"])
    entry["score"] = None if np.isnan(score) else score
    return entry


def write_whole(path: str, data: bytes) -> None:
    """Write a local file under a temporary name (``PATH.tmp-...``), then rename it: a reader
    never sees half of it (an entry here, the head start's read output too)."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def store_local(directory: str, key: str, entry: dict) -> None:
    """Write an entry to a local folder, whole (:func:`write_whole`)."""
    write_whole(os.path.join(directory, file_name(key)), encode(entry))
