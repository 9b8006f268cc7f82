"""The run's token store: every tokenized document's ids, written once by the tokenize step to
``OUT/.staging-<pid>/tokens/`` and read back slice by slice by the shard writer.

A document's ids are a file of its own (:func:`store`), or, for the documents the tokenize step
encodes together (a batch of up to 256 short records; not on Beam 2.77's DaskRunner, where
each document is encoded alone), one run of a file the batch shares (:func:`store_batch`): its
offset in the file travels with the path. A file for each of 100,000 records cost the tokenize
step ~85 us a record to create and the publish ~87 us a record to delete (a 2-core machine:
8.5 s and 8.7 s of a 68-s run).

Only references (path, offset, start, length) travel through the runner's shuffles, so the
memory a runner holds for them does not grow with the corpus: the ids themselves go through the
disk (or the output's object store), once in and once out. The folder is part of the staging folder
and goes with it when the output is published. Files are raw little-endian int32 arrays.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
from apache_beam.io.filesystems import FileSystems

from pipeline.remote import is_remote
from schemas.layout import TOKENS_DIR as TOKENS

_DTYPE = np.dtype("<i4")


def path_for(staging: str, doc_id: str) -> str:
    name = hashlib.sha256(doc_id.encode("utf-8")).hexdigest()[:32]
    return FileSystems.join(staging, TOKENS, name + ".bin")


def batch_path(staging: str, doc_ids: list[str]) -> str:
    """The file of a batch of documents' ids (named by all their ids, as one JSON list: no
    document's own name, no other batch's)."""
    return path_for(staging, json.dumps(["batch", *doc_ids]))


def store(path: str, tokens: np.ndarray) -> None:
    data = np.ascontiguousarray(tokens, dtype=_DTYPE)
    with FileSystems.create(path) as fh:
        fh.write(memoryview(data).cast("B"))


def store_batch(path: str, arrays: list[np.ndarray]) -> list[int]:
    """``arrays`` one after the other in one file; each one's offset in it, in ids."""
    offsets = np.concatenate([[0], np.cumsum([a.shape[0] for a in arrays])])
    store(path, np.concatenate(arrays) if arrays else np.zeros(0, dtype=_DTYPE))
    return [int(o) for o in offsets[:-1]]


def read(path: str, start: int, length: int) -> np.ndarray:
    """``length`` ids from position ``start`` of a stored file (a document's offset in a
    batch's file plus the position in the document)."""
    if not is_remote(path):
        out = np.fromfile(path, dtype=_DTYPE, count=length, offset=start * _DTYPE.itemsize)
    else:
        with FileSystems.open(path, compression_type="uncompressed") as fh:
            fh.seek(start * _DTYPE.itemsize)
            out = np.frombuffer(fh.read(length * _DTYPE.itemsize), dtype=_DTYPE)
    if out.shape[0] != length:
        raise OSError(f"token store {path}: asked for {length} ids at {start}, got {out.shape[0]}")
    return out.astype(np.int32, copy=False)
