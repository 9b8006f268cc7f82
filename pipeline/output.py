"""The output folder: staging, shard files, and the atomic finish (manifest.json last).

Workers write into a staging folder of this run's own, ``OUT/.staging-<pid>/`` (the run holds
the output's lock, ``pipeline/lock.py``, so any other ``.staging*`` folder is a dead run's and is
removed). When the pipeline has finished and its result passed the guards (``guard.py``), the
driver removes any previous manifest (so the folder is unfinished from then on), moves the
staged files into place and writes ``manifest.json`` last, through a temporary name and a
rename, so a folder with a manifest is always complete. A refused or failed run removes its
staging and leaves the previous output as it was. All I/O goes through
``apache_beam.io.filesystems``.

A run replaces only what it wrote: before it stages anything it writes the folder's marker
(``.longctx-output``; removed again by a run that fails before publishing, if it wrote it), and :func:`foreign_files` lists what a run would replace that no run
wrote (a user's ``report/`` or ``documents.arrow`` in a folder that is no output, a file of
theirs inside an output's ``shards/``): the run stops up front (``pipeline/config.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline import remote
from schemas.layout import (
    CACHE_DIR,
    LOCK,
    MANIFEST,
    MARKER,
    PUBLISHED,
    REPORT_DIR,
    SHARDS_DIR,
    STAGING,
    is_pipeline_manifest,
    is_shard_name,
    report_names,
)
from schemas.manifest import Manifest
from schemas.storage import read_bytes, read_table  # noqa: F401  (read_table re-exported)

BATCH_BYTES = 64 * 2**20  # Arrow record batches / Parquet row groups of about 64 MiB of tokens


def rows_per_batch(seq_len: int) -> int:
    return max(1, BATCH_BYTES // (4 * seq_len)) if seq_len > 0 else 1 << 20


class _HashingSink:
    """A write-only file object that hashes what passes through it."""

    def __init__(self, fh):
        self.fh, self.sha, self.size, self.closed = fh, hashlib.sha256(), 0, False

    def write(self, data) -> int:
        data = memoryview(data)
        self.sha.update(data)
        self.fh.write(data)
        self.size += data.nbytes
        return data.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def write_tables(tables, schema: pa.Schema, path: str, fmt: str) -> str:
    """Stream tables to ``path`` (any Beam filesystem), each as one Arrow record batch or one
    Parquet row group, so only one batch is in memory; returns the file's sha256. The bytes
    depend only on the tables: the same tables give the same file."""
    if fmt not in ("arrow", "parquet"):
        raise ValueError(f"unknown shard format {fmt!r} (arrow or parquet)")
    with FileSystems.create(path) as fh:
        sink = _HashingSink(fh)
        out = pa.PythonFile(sink, mode="w")
        if fmt == "arrow":
            with pa.ipc.new_stream(out, schema) as writer:
                for table in tables:
                    for batch in table.combine_chunks().to_batches(
                        max_chunksize=table.num_rows or 1
                    ):
                        writer.write_batch(batch)
        else:
            with pq.ParquetWriter(out, schema, compression="zstd") as writer:
                for table in tables:
                    writer.write_table(table, row_group_size=max(1, table.num_rows))
    return sink.sha.hexdigest()


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
    """A fresh, empty staging folder of this run's inside ``out``; staging folders left by
    killed runs are removed (call it while holding the output's lock)."""
    if remote.is_remote(out):  # not locked (lock.py): one fixed name, as before
        leftovers, name = [FileSystems.join(out, STAGING)], STAGING
    else:
        names = os.listdir(out) if os.path.isdir(out) else []
        leftovers = [os.path.join(out, n) for n in names if n.startswith(STAGING)]
        name = f"{STAGING}-{os.getpid()}"
    _delete_if_exists(leftovers)
    staging = FileSystems.join(out, name)
    FileSystems.mkdirs(staging)
    return staging


def mark_output(out: str) -> bool:
    """Write ``out``'s marker (before anything is staged there) unless it is there; True when
    this call wrote it (a run that fails before publishing removes it: :func:`unmark_output`)."""
    if not FileSystems.exists(out):
        FileSystems.mkdirs(out)
    marker = FileSystems.join(out, MARKER)
    if FileSystems.exists(marker):
        return False
    write_bytes(marker, b"longctx: a pipeline output folder (see manifest.json)\n")
    return True


def unmark_output(out: str) -> None:
    """Remove the marker a failed run wrote, so that it vouches for nothing; never raises."""
    with contextlib.suppress(Exception):
        _delete_if_exists([FileSystems.join(out, MARKER)])


def _listing(out: str):
    """``(top-level names, {folder: [its files]}, symlinked names, manifest reader)`` of the
    folder or prefix ``out``; None when it does not exist."""
    if remote.is_remote(out):
        try:
            rels = [rel for rel, _ in remote.list_files(out)]
        except (ValueError, OSError):
            return None
        top = {rel.split("/", 1)[0] for rel in rels}
        inside: dict[str, list[str]] = {}
        for rel in rels:
            head, _, rest = rel.partition("/")
            if rest:
                inside.setdefault(head, []).append(rest)
        return top, inside, set(), lambda: remote.read_bytes(FileSystems.join(out, MANIFEST), 2**30)
    if not os.path.isdir(out):
        return None
    top = set(os.listdir(out))
    inside = {
        name: sorted(os.listdir(os.path.join(out, name)))
        for name in top & {SHARDS_DIR, REPORT_DIR}
        if os.path.isdir(os.path.join(out, name)) and not os.path.islink(os.path.join(out, name))
    }
    links = {name for name in top if os.path.islink(os.path.join(out, name))}
    return top, inside, links, lambda: open(os.path.join(out, MANIFEST), "rb").read()


def foreign_files(out: str) -> list[str]:
    """What a run into ``out`` (a folder, or a gs:// / s3:// prefix) would replace that no run
    wrote, as paths relative to ``out``. A run wrote the folder when it holds the marker, this
    pipeline's ``manifest.json``, or what only a run leaves (``.staging-*``, ``.lock``,
    ``.cache``: a run killed while publishing, before the marker existed). Listed: another
    tool's ``manifest.json`` (a run replaces it); in a folder no run wrote, every published name
    present (``shards/``, ``report/``, ``documents.arrow``, ``rejects.jsonl``); in an output,
    files of ``shards/`` and ``report/`` that a run does not write; a published name that is a
    symbolic link (the run would fail half-way through replacing it). Files beside the
    published names are never touched, so never listed."""
    found = _listing(out)
    if found is None:
        return []
    top, inside, links, read_manifest = found
    manifest_ours = False
    if MANIFEST in top:
        try:
            manifest_ours = is_pipeline_manifest(read_manifest())
        except OSError:
            manifest_ours = False
    ours = (
        manifest_ours
        or MARKER in top
        or any(n.startswith(STAGING) or n in (LOCK, CACHE_DIR) for n in top)
    )
    listed = [] if manifest_ours or MANIFEST not in top else [MANIFEST]
    keep = {SHARDS_DIR: is_shard_name, REPORT_DIR: report_names().__contains__}
    for name in PUBLISHED:
        if name not in top:
            continue
        if name in links:
            listed.append(f"{name} (a symbolic link)")
        elif not ours:
            listed.append(name + ("/" if name in inside else ""))
        elif name in keep:
            listed += [f"{name}/{n}" for n in inside.get(name, []) if not keep[name](n)]
    return listed


def discard_staging(staging: str) -> None:
    """Remove a run's staging folder (a refused or failed run); never raises."""
    with contextlib.suppress(Exception):  # best effort: the next run removes it too
        _delete_if_exists([staging])


def publish(out: str, staging: str, manifest: Manifest) -> None:
    """Move staged files into ``out`` and write the manifest last, atomically."""
    _delete_if_exists([FileSystems.join(out, MANIFEST)])
    targets = [FileSystems.join(out, name) for name in PUBLISHED]
    _delete_if_exists(targets)
    sources = [FileSystems.join(staging, name) for name in PUBLISHED]
    moves = [(s, t) for s, t in zip(sources, targets, strict=True) if FileSystems.exists(s)]
    FileSystems.rename([s for s, _ in moves], [t for _, t in moves])
    _delete_if_exists([staging])
    tmp = FileSystems.join(out, MANIFEST + ".tmp")
    write_bytes(tmp, manifest.to_bytes())
    FileSystems.rename([tmp], [FileSystems.join(out, MANIFEST)])
