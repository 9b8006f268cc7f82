"""Inputs on a filesystem other than local disk (gs://, s3://, hdfs://, anything registered
with ``apache_beam.io.filesystems``): listing and reading through Beam's FileSystems.

A remote book is one object; a remote repository is every object under its prefix, read with
the same skip rules as a folder (``transforms.inputs.repository``); a remote ``--repos-root`` holds one
repository per first path component; remote records files are read into memory.
"""

from __future__ import annotations


def _filesystems():
    """Beam's FileSystems, imported on first use: local runs never pay for it before the flags
    are checked (``python -m pipeline.run --help`` imports no Beam)."""
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def is_remote(path: str) -> bool:
    return "://" in path


def list_files(prefix: str) -> list[tuple[str, int]]:
    """``(relative_path, size)`` of every object under ``prefix``, sorted."""
    base = prefix.rstrip("/")
    found = _filesystems().match([base + "/**"])[0].metadata_list
    out = []
    for m in found:
        if m.path.startswith(base + "/"):
            out.append((m.path[len(base) + 1 :], int(m.size_in_bytes)))
    return sorted(out)


def is_remote_file(path: str) -> bool:
    """A single object (not a prefix with objects under it)."""
    try:
        return _filesystems().exists(path) and not list_files(path)
    except (ValueError, OSError):
        return False


def exists(path: str) -> bool:
    try:
        if _filesystems().exists(path):
            return True
        return bool(list_files(path))
    except (ValueError, OSError):
        return False


def read_bytes(path: str, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of one object (so a caller can tell it was too large)."""
    with _filesystems().open(path) as fh:
        return fh.read(limit + 1)
