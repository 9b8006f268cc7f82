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
import re
import uuid
import zipfile

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
    entry = _plain_arrays(data)
    if entry is None:  # anything np.savez of plain 1-D or 0-d arrays would not write
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        entry = {k: loaded[k] for k in loaded.files}
    score = float(entry["score"])
    entry["score"] = None if np.isnan(score) else score
    return entry


# The header ``np.save`` writes for a plain 1-D or 0-d array (format 1.0), which is what
# ``encode`` stores: ids, offsets, windows, scores.
_NPY_MAGIC = b"\x93NUMPY\x01\x00"
_NPY_HEADER = re.compile(
    r"\{'descr': '([<|][iuf][1248])', 'fortran_order': False, 'shape': \((\d*),?\), \} *\n\Z"
)


def _plain_arrays(data: bytes) -> dict | None:
    """The arrays of an entry, read without ``np.load``, whose header parsing (``ast``) was
    most of a short record's load: 282 -> 92 us an entry on this machine, an ``--incremental``
    rerun of 100,000 records loading one each. Only the members ``encode`` writes (stored,
    format 1.0, little-endian numeric, C order, 1-D or 0-d); None for anything else, which
    ``np.load`` then reads. Arrays come back writable, as ``np.load`` gives them."""
    out = {}
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                return None
            raw = z.read(info)
            if raw[:8] != _NPY_MAGIC:
                return None
            end = 10 + int.from_bytes(raw[8:10], "little")
            match = _NPY_HEADER.match(raw[10:end].decode("latin1"))
            if match is None:
                return None
            dtype, length = np.dtype(match[1]), match[2]
            shape = (int(length),) if length else ()
            if len(raw) - end != dtype.itemsize * (int(length) if length else 1):
                return None
            out[info.filename[:-4]] = np.frombuffer(raw, dtype, offset=end).reshape(shape).copy()
    return out


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
