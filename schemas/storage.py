"""Reading an output folder on any filesystem: Beam's FileSystems (gs://, s3://, hdfs://)
when Apache Beam is installed, plain local files otherwise (e.g. on a GPU box without Beam)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "manifest.json"

try:
    from apache_beam.io.filesystems import FileSystems

    import pipeline  # noqa: F401  (installs the filter for Beam's import-time apitools warning)
except ImportError:  # the training machine may not have Beam
    FileSystems = None


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts) if FileSystems else os.path.join(base, *parts)


def exists(path: str) -> bool:
    return FileSystems.exists(path) if FileSystems else os.path.exists(path)


def read_bytes(path: str) -> bytes:
    if FileSystems:
        with FileSystems.open(path, compression_type="uncompressed") as fh:
            return fh.read()
    with open(path, "rb") as fh:
        return fh.read()


def read_table(path: str) -> pa.Table:
    return table_from_bytes(read_bytes(path), path)


def table_from_bytes(data: bytes, path: str) -> pa.Table:
    if path.endswith(".parquet"):
        return pq.read_table(pa.BufferReader(data))
    return pa.ipc.open_stream(data).read_all()
