"""Reading files and books into :class:`TextDocument` s (repositories: ``repository.py``).

Readers never follow symbolic links, never read outside the root they were given, and turn
every file they do not use into a :class:`Reject` with a reason, so nothing is dropped silently.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from schemas.layout import MANIFEST, MARKER, SHARDS_DIR, is_pipeline_manifest
from transforms.documents import BOOK, Reject, RejectError, TextDocument
from transforms.inputs.books import (
    chapter_starts,
    gutenberg_language,
    gutenberg_title,
    strip_gutenberg,
)
from transforms.inputs.decode import decode_text
from transforms.inputs.markup import epub_text, html_to_text

BOOK_SUFFIXES = (".txt", ".md", ".html", ".htm", ".xhtml", ".epub")
# Folders never searched for books: version control and tool caches.
SKIP_BOOK_DIRS = {
    ".git": "version-control metadata",
    ".hg": "version-control metadata",
    ".svn": "version-control metadata",
    "__pycache__": "bytecode cache",
}
# Extensions that are never text; rejected without reading the file.
BINARY_SUFFIXES = frozenset(
    [
        ".png",
        ".jpg",
        ".jpeg",
        ".gif",
        ".bmp",
        ".ico",
        ".webp",
        ".tif",
        ".tiff",
        ".pdf",
        ".zip",
        ".gz",
        ".tgz",
        ".bz2",
        ".xz",
        ".zst",
        ".7z",
        ".rar",
        ".tar",
        ".jar",
        ".war",
        ".class",
        ".so",
        ".dylib",
        ".dll",
        ".exe",
        ".o",
        ".a",
        ".lib",
        ".obj",
        ".pyc",
        ".pyo",
        ".pyd",
        ".whl",
        ".egg",
        ".bin",
        ".dat",
        ".db",
        ".sqlite",
        ".npy",
        ".npz",
        ".pt",
        ".pth",
        ".safetensors",
        ".onnx",
        ".pkl",
        ".pickle",
        ".woff",
        ".woff2",
        ".ttf",
        ".otf",
        ".eot",
        ".mp3",
        ".mp4",
        ".wav",
        ".ogg",
        ".flac",
        ".avi",
        ".mov",
        ".mkv",
        ".webm",
        ".wasm",
    ]
)


@dataclass(frozen=True)
class ReadSettings:
    """How inputs are read: size limit, the records' text field, and the order of a
    repository's files (``dependency``: imports first, the project's default; ``path``: sorted by
    path; ``shuffled``: a seeded shuffle per repository. The last two are for ablations)."""

    max_file_bytes: int = 32 * 1024 * 1024
    text_field: str = "text"
    documents_kind: str = "book"  # records without a "kind" field (--documents-kind)
    file_order: str = "dependency"
    seed: int = 0


FILE_ORDERS = ("dependency", "path", "shuffled")


def display_path(path: str | os.PathLike) -> str:
    """A path as valid UTF-8 text (undecodable bytes in names become U+FFFD)."""
    return os.fsencode(path).decode("utf-8", "replace")


def read_file_text(path: str, limits: ReadSettings) -> tuple[str, str]:
    """Read and decode one regular file without following a symlink; raises RejectError."""
    return decode_text(read_file_bytes(path, limits))


def read_file_bytes(path: str, limits: ReadSettings) -> bytes:
    """The bytes of one regular file, never through a symlink; raises RejectError."""
    try:
        st = os.lstat(path)
    except OSError as err:
        raise RejectError("unreadable", err.strerror or str(err)) from None
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        if not os.path.exists(path):
            raise RejectError("broken_symlink", f"points to {display_path(target)}")
        raise RejectError("symlink", f"links are not followed (points to {display_path(target)})")
    if not stat.S_ISREG(st.st_mode):
        raise RejectError("not_a_file", "not a regular file")
    if st.st_size > limits.max_file_bytes:
        raise RejectError(
            "too_large", f"{st.st_size} bytes > --max-file-mb {limits.max_file_bytes / 2**20:g}"
        )
    suffix = os.path.splitext(path)[1].lower()
    if suffix in BINARY_SUFFIXES:
        raise RejectError("binary", f"binary file type {suffix}")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(limits.max_file_bytes + 1)
    except OSError as err:
        raise RejectError("unreadable", err.strerror or str(err)) from None
    if len(data) > limits.max_file_bytes:
        raise RejectError("too_large", "grew past --max-file-mb while reading")
    return data


def read_book(
    path: str, doc_id: str, limits: ReadSettings, data: bytes | None = None
) -> TextDocument:
    """One book file -> a document (Gutenberg boilerplate stripped); raises RejectError.

    ``data``: the file's bytes when they were read elsewhere (a remote object)."""
    suffix = os.path.splitext(path)[1].lower()
    title = ""
    if data is None:
        data = read_file_bytes(path, limits)
    elif len(data) > limits.max_file_bytes:
        raise RejectError("too_large", f"over --max-file-mb {limits.max_file_bytes / 2**20:g}")
    if suffix == ".epub":
        text, title = epub_text(data, limits.max_file_bytes)
    elif suffix in (".html", ".htm", ".xhtml"):
        text = html_to_text(decode_text(data)[0])
    else:
        if suffix in BINARY_SUFFIXES:
            raise RejectError("binary", f"binary file type {suffix}")
        text = decode_text(data)[0]
    body, _stripped = strip_gutenberg(text)
    if not body.strip():
        raise RejectError("empty", "no text left after removing Project Gutenberg boilerplate")
    return TextDocument(
        doc_id=doc_id,
        kind=BOOK,
        origin=display_path(path),
        texts=[body],
        title=gutenberg_title(text) or title or Path(path).stem,
        chapters=chapter_starts(body),
        language=gutenberg_language(text),
    )


def probe_books(path: str, limits: ReadSettings) -> tuple[bool, Counter]:
    """Whether a local book file, or a folder of books, holds at least one book that
    :func:`read_book` accepts; reads books in path order only until the first good one.

    Returns ``(usable, seen)``: ``seen`` counts ``"files"``, ``"book_files"`` and one key per
    reject reason met, for an error message."""
    seen: Counter = Counter()
    folder = os.path.isdir(path) and not os.path.islink(path)
    items = walk_folder(path) if folder else iter([(os.path.basename(path), path)])
    for item in items:
        if isinstance(item, Reject):
            seen[item.reason] += 1
            continue
        rel, abs_path = item
        seen["files"] += 1
        if folder and os.path.splitext(rel)[1].lower() not in BOOK_SUFFIXES:
            seen["unsupported_type"] += 1  # the reason rejects.jsonl gives it
            continue
        seen["book_files"] += 1
        try:
            read_book(abs_path, "probe", limits)
        except RejectError as err:
            seen[err.reason] += 1
            continue
        return True, seen
    return False, seen


# screen(rel_dir, abs_dir, names) -> a (reason, detail) that skips the whole folder, or a
# check(rel, name, is_dir) -> (reason, detail) | None applied to each entry of the folder.
Screen = Callable[[str, str, set], "tuple[str, str] | Callable[[str, str, bool], tuple | None]"]


OUTPUT_FOLDER = (
    "skipped_dir",
    "a longctx output folder (its .longctx-output marker, or its manifest.json beside shards/): "
    "never read as input",
)


def is_output_folder(folder: str, names) -> bool:
    """Whether the local ``folder``, holding the entries ``names``, is a pipeline output: its
    marker, or (outputs from before the marker) this pipeline's manifest.json beside shards/ (a
    bare ``manifest.json`` is anybody's). Walking an input, such a folder is skipped."""
    names = set(names)
    if MARKER in names:
        return True
    if MANIFEST in names and SHARDS_DIR in names:
        try:
            return is_pipeline_manifest(Path(folder, MANIFEST).read_bytes())
        except OSError:
            return False
    return False


def skip_book_dirs(rel_dir: str, abs_dir: str, names: set):
    if is_output_folder(abs_dir, names):
        return OUTPUT_FOLDER

    def check(rel: str, name: str, is_dir: bool):
        return ("skipped_dir", SKIP_BOOK_DIRS[name]) if is_dir and name in SKIP_BOOK_DIRS else None

    return check


def walk_folder(root: str, screen: Screen = skip_book_dirs) -> Iterator[tuple[str, str] | Reject]:
    """Yield ``(relative_posix_path, absolute_path)`` of the files under a folder, in path order.

    ``screen`` decides, per folder, what is skipped (default: version control and caches);
    skipped entries and folders that cannot be listed come out as :class:`Reject`. Symbolic
    links (to files or folders) are yielded as files, so that the reader rejects them.
    """
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        abs_dir = os.path.join(root, rel_dir) if rel_dir else root
        try:
            with os.scandir(abs_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            yield Reject(display_path(abs_dir), "unreadable", err.strerror or str(err))
            continue
        check = screen(rel_dir, abs_dir, {e.name for e in entries})
        if isinstance(check, tuple):
            yield Reject(display_path(abs_dir), *check)
            continue
        subdirs = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            skip = check(rel, entry.name, is_dir)
            if skip:
                yield Reject(display_path(entry.path), *skip)
            elif is_dir:
                subdirs.append(rel)
            else:
                yield rel, entry.path
        stack.extend(reversed(subdirs))
