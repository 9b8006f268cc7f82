"""The output folder: staging, shard files, and the atomic finish (manifest.json last).

Workers write into ``OUT/.staging/``. When the pipeline has finished, the driver removes any
previous manifest (so the folder is unfinished from then on), moves the staged files into place
and writes ``manifest.json`` last, through a temporary name and a rename, so a folder with a
manifest is always complete. All I/O goes through ``apache_beam.io.filesystems``.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas.storage import read_bytes, read_table  # noqa: F401  (read_table re-exported)

STAGING = ".staging"
MANIFEST = "manifest.json"
PUBLISHED = ("shards", "documents.arrow", "rejects.jsonl", "report")
BATCH_BYTES = 64 * 2**20  # Arrow record batches / Parquet row groups of about 64 MiB of tokens


def rows_per_batch(seq_len: int) -> int:
    return max(1, BATCH_BYTES // (4 * seq_len)) if seq_len > 0 else 1 << 20


def table_bytes(table: pa.Table, fmt: str, seq_len: int) -> bytes:
    """Serialise deterministically: same table, same bytes."""
    sink = pa.BufferOutputStream()
    if fmt == "arrow":
        with pa.ipc.new_stream(sink, table.schema) as writer:
            for batch in table.combine_chunks().to_batches(max_chunksize=rows_per_batch(seq_len)):
                writer.write_batch(batch)
    elif fmt == "parquet":
        pq.write_table(table, sink, row_group_size=rows_per_batch(seq_len), compression="zstd")
    else:
        raise ValueError(f"unknown shard format {fmt!r} (arrow or parquet)")
    return sink.getvalue().to_pybytes()


def write_table(table: pa.Table, path: str, fmt: str, seq_len: int) -> str:
    """Write a table to ``path`` (any Beam filesystem); returns the file's sha256."""
    data = table_bytes(table, fmt, seq_len)
    with FileSystems.create(path) as fh:
        fh.write(data)
    return hashlib.sha256(data).hexdigest()


def read_json(path: str):
    return json.loads(read_bytes(path).decode("utf-8"))


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    with FileSystems.create(path) as fh:
        fh.write(data)


def _delete_if_exists(paths: list[str]) -> None:
    existing = [p for p in paths if FileSystems.exists(p)]
    if existing:
        FileSystems.delete(existing)


def prepare_staging(out: str) -> str:
    """A fresh, empty staging folder inside ``out`` (a leftover of a killed run is removed)."""
    staging = FileSystems.join(out, STAGING)
    _delete_if_exists([staging])
    FileSystems.mkdirs(staging)
    return staging


def publish(out: str, staging: str, manifest: dict) -> None:
    """Move staged files into ``out`` and write the manifest last, atomically."""
    _delete_if_exists([FileSystems.join(out, MANIFEST)])
    targets = [FileSystems.join(out, name) for name in PUBLISHED]
    _delete_if_exists(targets)
    sources = [FileSystems.join(staging, name) for name in PUBLISHED]
    moves = [(s, t) for s, t in zip(sources, targets, strict=True) if FileSystems.exists(s)]
    FileSystems.rename([s for s, _ in moves], [t for _, t in moves])
    _delete_if_exists([staging])
    tmp = FileSystems.join(out, MANIFEST + ".tmp")
    write_bytes(tmp, (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode("utf-8"))
    FileSystems.rename([tmp], [FileSystems.join(out, MANIFEST)])
