"""Reading an output folder: local paths with plain file I/O, remote ones (gs://, s3://,
hdfs://) through Apache Beam's FileSystems when Beam is installed (the training machine may not
have it: it reads local shards)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq


def _remote(path: str) -> bool:
    return "://" in path


def _filesystems():
    try:
        from apache_beam.io.filesystems import FileSystems
    except ImportError:  # pragma: no cover - depends on the machine
        raise OSError("reading gs:// / s3:// / hdfs:// outputs needs apache-beam") from None
    return FileSystems


def join(base: str, *parts: str) -> str:
    return _filesystems().join(base, *parts) if _remote(base) else os.path.join(base, *parts)


def exists(path: str) -> bool:
    return _filesystems().exists(path) if _remote(path) else os.path.exists(path)


def read_bytes(path: str) -> bytes:
    if _remote(path):
        with _filesystems().open(path, compression_type="uncompressed") as fh:
            return fh.read()
    with open(path, "rb") as fh:
        return fh.read()


def read_table(path: str) -> pa.Table:
    return table_from_bytes(read_bytes(path), path)


def table_from_bytes(data: bytes, path: str) -> pa.Table:
    if path.endswith(".parquet"):
        return pq.read_table(pa.BufferReader(data))
    return pa.ipc.open_stream(data).read_all()
