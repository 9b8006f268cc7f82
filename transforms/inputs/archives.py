"""Read the members of a ``.zip`` / ``.tar.gz`` repository archive without extracting it.

Nothing is written to disk and no member path is ever joined to a real folder, so a member
named ``../../etc/passwd`` cannot escape: it becomes a ``path_escape`` reject. Links and
device files are rejected too. Against decompression bombs:

- a member bigger than ``--max-file-mb`` (declared or actually read) is ``too_large``;
- a zip member whose declared size is more than ``MAX_RATIO`` times its compressed size (and
  over 1 MiB) is a ``decompression_bomb`` and is not inflated;
- reading stops once the archive has produced ``MAX_RATIO`` times its own size plus 64 MiB;
  the members not read are rejected as ``decompression_bomb`` (one line for the rest).

A GitHub-style archive whose members all sit under one top folder (``repo-main/...``) is read
as if that folder were the repository root.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
import zipfile
from collections.abc import Iterator

from transforms.documents import Reject

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
MAX_RATIO = 100
_SLACK = 64 * 2**20


def is_archive(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES) and os.path.isfile(path)


def safe_member_name(name: str) -> str | None:
    """The member's normalised relative POSIX path, or None if it could escape the archive."""
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    norm = posixpath.normpath(name)
    if norm in (".", "") or norm == ".." or norm.startswith("../"):
        return None
    return norm


def _strip_common_top(names: list[str]) -> str:
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        return next(iter(tops)) + "/"
    return ""


def archive_members(
    path: str, display: str, max_file_bytes: int
) -> Iterator[tuple[str, bytes] | Reject]:
    """Yield ``(relative_path, data)`` per regular member, in name order, or a Reject."""
    budget = MAX_RATIO * os.path.getsize(path) + _SLACK
    if path.lower().endswith(".zip"):
        yield from _zip_members(path, display, max_file_bytes, budget)
    else:
        yield from _tar_members(path, display, max_file_bytes, budget)


def _zip_members(path, display, max_file_bytes, budget):
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        yield Reject(display, "bad_archive", f"{type(err).__name__}: {err}")
        return
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        safe = [(safe_member_name(i.filename), i) for i in infos]
        top = _strip_common_top([n for n, _ in safe if n])
        used = 0
        for name, info in sorted(safe, key=lambda x: x[0] or ""):
            where = f"{display}!{info.filename}"
            if name is None:
                yield Reject(where, "path_escape", "archive member path leaves the archive")
                continue
            mode = (info.external_attr >> 16) & 0o170000
            if mode and mode != 0o100000:
                kind = "symlink" if mode == 0o120000 else "not_a_file"
                yield Reject(where, kind, "archive links and special files are not followed")
                continue
            if info.file_size > max_file_bytes:
                yield Reject(where, "too_large", f"{info.file_size} bytes declared")
                continue
            if info.file_size > 2**20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                yield Reject(
                    where,
                    "decompression_bomb",
                    f"{info.file_size} bytes from {info.compress_size} compressed",
                )
                continue
            if used > budget:
                yield Reject(where, "decompression_bomb", "archive expands past its size limit")
                continue
            try:
                with zf.open(info) as fh:
                    data = fh.read(max_file_bytes + 1)
            except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError) as err:
                yield Reject(where, "bad_archive", f"{type(err).__name__}: {err}")
                continue
            used += len(data)
            if len(data) > max_file_bytes:
                yield Reject(where, "too_large", "member larger than declared")
                continue
            yield name[len(top) :] if top else name, data


def _tar_members(path, display, max_file_bytes, budget):
    try:
        tf = tarfile.open(path, mode="r:*")  # noqa: SIM115 - closed by the with below
        members = tf.getmembers()
    except (tarfile.TarError, OSError, EOFError) as err:
        yield Reject(display, "bad_archive", f"{type(err).__name__}: {err}")
        return
    with tf:
        files = [m for m in members if not m.isdir()]
        safe = [(safe_member_name(m.name), m) for m in files]
        top = _strip_common_top([n for n, _ in safe if n])
        used = 0
        for name, m in sorted(safe, key=lambda x: x[0] or ""):
            where = f"{display}!{m.name}"
            if name is None:
                yield Reject(where, "path_escape", "archive member path leaves the archive")
                continue
            if m.issym() or m.islnk():
                yield Reject(where, "symlink", f"archive link to {m.linkname} is not followed")
                continue
            if not m.isfile():
                yield Reject(where, "not_a_file", "special file in archive")
                continue
            if m.size > max_file_bytes:
                yield Reject(where, "too_large", f"{m.size} bytes")
                continue
            if used + m.size > budget:
                yield Reject(where, "decompression_bomb", "archive expands past its size limit")
                continue
            try:
                fh = tf.extractfile(m)
                data = fh.read(max_file_bytes + 1) if fh else b""
            except (tarfile.TarError, OSError, EOFError) as err:
                yield Reject(where, "bad_archive", f"{type(err).__name__}: {err}")
                continue
            used += len(data)
            yield name[len(top) :] if top else name, data
