"""A code repository (folder or archive) -> one document, files in dependency order.

What is left out, each as a :class:`Reject` with its reason (nothing is dropped silently):

- ``skipped_dir``: version control, caches, vendored and built trees (``node_modules``,
  ``vendor``, ``dist``, ``build``, ``target``, ``site-packages``) and virtualenvs (any folder
  holding ``pyvenv.cfg``). A ``build`` or ``dist`` folder that a ``package.json``'s ``main`` /
  ``exports`` / ``module`` / ``bin`` / ``types`` points into, or that its ``files`` list
  publishes, is kept: a published npm package keeps its real code there (rules in
  :func:`transforms.code.screening.package_build_dirs`);
- ``gitignored``: paths matched by the repository's ``.gitignore`` files (git's rules, nested
  files apply below their folder; read with ``pathspec``);
- ``lock_file``, ``minified`` (``*.min.js`` or lines averaging over 300 characters with one
  over 2,000), ``generated`` (a header marker that describes the file itself; the rules, and
  the one that fired in each reject's detail, are in :mod:`transforms.code.screening`);
- ``notebook_outputs``: a notebook is kept as its cells' sources (jupytext "percent" format);
  the outputs it held are listed under ``path#outputs``;
- everything :func:`transforms.inputs.reading.read_file_text` rejects (binary, too large, links...),
  except an empty ``__init__.py``: it carries package structure, so it is kept, and appears in
  the document as its file header with an empty body (~10 tokens). Only a repository with
  nothing else is rejected as ``empty``, its markers with it.

The files kept are ordered by :func:`transforms.code.ordering.order_files` over the imports found by
:func:`transforms.code.dependencies.dependency_edges`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import random
from collections import Counter
from collections.abc import Callable, Iterator

import pathspec

from schemas.layout import enclosing_folder, marked_folders
from transforms.code.dependencies import dependency_edges, main_language
from transforms.code.ordering import cycle_members, order_files
from transforms.code.screening import BUILD_DIRS, package_build_dirs, screen_file
from transforms.documents import CODE, Reject, RejectError, TextDocument
from transforms.inputs.archives import archive_members, is_archive
from transforms.inputs.decode import decode_text
from transforms.inputs.reading import (
    BINARY_SUFFIXES,
    OUTPUT_FOLDER,
    ReadSettings,
    display_path,
    is_output_folder,
    read_file_text,
    walk_folder,
)

# Kept when empty: an empty __init__.py makes its folder a package (module names, relative
# imports); it enters the document as its header line with an empty body.
PACKAGE_MARKERS = ("__init__.py", "__init__.pyi")
SKIP_DIRS = {
    ".git": "version-control metadata",
    ".hg": "version-control metadata",
    ".svn": "version-control metadata",
    "__pycache__": "bytecode cache",
    ".mypy_cache": "tool cache",
    ".pytest_cache": "tool cache",
    ".ruff_cache": "tool cache",
    ".tox": "tool cache",
    ".nox": "tool cache",
    ".ipynb_checkpoints": "tool cache",
    "node_modules": "vendored dependencies",
    "bower_components": "vendored dependencies",
    "vendor": "vendored dependencies",
    "site-packages": "installed packages",
    ".venv": "virtualenv",
    "venv": "virtualenv",
    ".eggs": "build output",
    "dist": "build output",
    "build": "build output",
    "target": "build output",
}


def _skip_detail(name: str) -> str:
    if name in BUILD_DIRS:
        return f"{SKIP_DIRS[name]} (no package.json entry point or published files in it)"
    return SKIP_DIRS[name]


class _Ignore:
    """The .gitignore rules in force, one spec per folder that has a .gitignore."""

    def __init__(self):
        self.specs: list[tuple[str, pathspec.PathSpec]] = []

    def add(self, folder: str, text: str) -> None:
        spec = pathspec.GitIgnoreSpec.from_lines(text.splitlines())
        self.specs.append((folder, spec))

    def ignored(self, rel: str, is_dir: bool) -> bool:
        verdict = False
        for folder, spec in self.specs:  # outer folders first; deeper files can override
            if folder and not rel.startswith(folder + "/"):
                continue
            sub = rel[len(folder) + 1 :] if folder else rel
            result = spec.check_file(sub + "/" if is_dir else sub)
            if result.include is not None:
                verdict = result.include
        return verdict


def _folder_entries(root: str, limits: ReadSettings) -> Iterator[tuple[str, object] | Reject]:
    """``(rel, text_or_RejectError)`` per file of a folder, in path order, honouring .gitignore."""
    ignore = _Ignore()
    entry_dirs: set[str] = set()  # build folders that a package.json points into

    def screen(rel_dir: str, abs_dir: str, names: set):
        if is_output_folder(abs_dir, names):
            return OUTPUT_FOLDER
        if "pyvenv.cfg" in names and rel_dir:
            return ("skipped_dir", "virtualenv (holds pyvenv.cfg)")
        if ".gitignore" in names:
            try:
                text, _ = read_file_text(os.path.join(abs_dir, ".gitignore"), limits)
                ignore.add(display_path(rel_dir), text)
            except RejectError:
                pass  # the file itself is reported when it is read
        if "package.json" in names:
            with contextlib.suppress(RejectError):
                text, _ = read_file_text(os.path.join(abs_dir, "package.json"), limits)
                entry_dirs.update(posixpath.join(rel_dir, d) for d in package_build_dirs(text))

        def check(rel: str, name: str, is_dir: bool):
            if ignore.ignored(display_path(rel), is_dir):
                return ("gitignored", "matched by .gitignore")
            if is_dir and name in SKIP_DIRS and rel not in entry_dirs:
                return ("skipped_dir", _skip_detail(name))
            return None

        return check

    for item in walk_folder(root, screen):
        if isinstance(item, Reject):
            yield item
            continue
        rel, path = item
        try:
            yield rel, read_file_text(path, limits)[0]
        except RejectError as err:
            yield rel, err


def _member_entries(
    listing: list[tuple[str, int]],
    read: Callable[[str], bytes],
    where: Callable[[str], str],
    limits: ReadSettings,
) -> Iterator[tuple[str, object] | Reject]:
    """Entries of a repository given as a listing ``(rel, size)`` and a reader (an archive's
    members, or the objects under a gs:// / s3:// prefix): the same skip rules as a folder,
    applied before anything but the .gitignore files is read."""
    ignore = _Ignore()
    for rel, _ in listing:
        if posixpath.basename(rel) == ".gitignore":
            with contextlib.suppress(OSError, RejectError):
                ignore.add(posixpath.dirname(rel), read(rel).decode("utf-8", "replace"))
    entry_dirs: set[str] = set()
    for rel, _ in listing:
        if posixpath.basename(rel) == "package.json":
            with contextlib.suppress(OSError, RejectError):
                text = decode_text(read(rel))[0]
                folder = posixpath.dirname(rel)
                entry_dirs.update(posixpath.join(folder, d) for d in package_build_dirs(text))
    venvs = {posixpath.dirname(rel) for rel, _ in listing if rel.endswith("/pyvenv.cfg")}
    outputs = marked_folders(rel for rel, _ in listing)  # pipeline outputs inside the listing
    for rel, size in listing:
        parts = rel.split("/")
        folders = ["/".join(parts[:k]) for k in range(1, len(parts))]
        skip = next(
            (
                p
                for p, f in zip(parts[:-1], folders, strict=True)
                if p in SKIP_DIRS and f not in entry_dirs
            ),
            None,
        )
        if enclosing_folder(rel, outputs) is not None:
            yield Reject(where(rel), *OUTPUT_FOLDER)
        elif any(ignore.ignored(f, True) for f in folders) or ignore.ignored(rel, False):
            yield Reject(where(rel), "gitignored", "matched by .gitignore")
        elif skip:
            yield Reject(where(rel), "skipped_dir", _skip_detail(skip))
        elif any(f in venvs for f in folders):
            yield Reject(where(rel), "skipped_dir", "virtualenv (holds pyvenv.cfg)")
        elif posixpath.splitext(rel)[1].lower() in BINARY_SUFFIXES:
            yield rel, RejectError("binary", f"binary file type {posixpath.splitext(rel)[1]}")
        elif size > limits.max_file_bytes:
            yield rel, RejectError("too_large", f"{size} bytes > --max-file-mb")
        else:
            try:
                yield rel, decode_text(read(rel))[0]
            except RejectError as err:
                yield rel, err
            except OSError as err:
                yield rel, RejectError("unreadable", str(err))


def _archive_entries(path: str, limits: ReadSettings) -> Iterator[tuple[str, object] | Reject]:
    members: dict[str, bytes] = {}
    for item in archive_members(path, display_path(path), limits.max_file_bytes):
        if isinstance(item, Reject):
            yield item
        else:
            members[item[0]] = item[1]
    listing = [(rel, len(data)) for rel, data in members.items()]
    yield from _member_entries(
        listing, members.__getitem__, lambda rel: f"{display_path(path)}!{rel}", limits
    )


def _notebook_text(text: str) -> tuple[str, int]:
    """A notebook's cell sources in jupytext percent format, and how many outputs it held."""
    nb = json.loads(text)
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ValueError("no cells list")
    out, n_outputs = [], 0
    for cell in nb["cells"]:
        src = cell.get("source", "")
        src = "".join(src) if isinstance(src, list) else str(src)
        n_outputs += len(cell.get("outputs", []) or [])
        kind = cell.get("cell_type", "code")
        if kind == "markdown":
            body = "\n".join("# " + line if line else "#" for line in src.splitlines())
            out.append(f"# %% [markdown]\n{body}\n")
        else:
            out.append(f"# %%\n{src}\n")
    return "\n".join(out), n_outputs


def probe_repository(root: str, limits: ReadSettings) -> tuple[bool, Counter]:
    """Whether a local repository folder or archive holds at least one file that
    :func:`read_repository` would keep, reading files in path order only until the first one.

    Returns ``(usable, seen)``: ``seen`` counts what was met before the answer (``"files"``,
    and one key per reject reason) for an error message. Cheap on a good repository (one
    file read); reads every file only when none is usable."""
    seen: Counter = Counter()
    entries = _archive_entries(root, limits) if is_archive(root) else _folder_entries(root, limits)
    for item in entries:
        if isinstance(item, Reject):
            seen[item.reason] += 1
            continue
        rel, content = item
        seen["files"] += 1
        if isinstance(content, RejectError):
            seen[content.reason] += 1
            continue
        if rel.lower().endswith(".ipynb"):
            try:
                content, _ = _notebook_text(content)
            except (ValueError, TypeError, AttributeError):
                seen["bad_notebook"] += 1
                continue
        screened = screen_file(display_path(rel), content)
        if screened:
            seen[screened[0]] += 1
            continue
        return True, seen
    return False, seen


def _imported_generated(files: list[str], edges, generated: set[str]) -> set[str]:
    """The generated files that a kept file imports, directly or through other such files:
    they are part of the program (idna's ``idnadata.py`` tables, a ``_pb2.py`` its code
    imports), and leaving them out would leave those imports pointing at nothing."""
    imports: dict[int, list[int]] = {}
    for a, b in edges:
        imports.setdefault(a, []).append(b)
    kept = {i for i, f in enumerate(files) if f not in generated}
    todo = list(kept)
    while todo:
        for b in imports.get(todo.pop(), ()):
            if b not in kept:
                kept.add(b)
                todo.append(b)
    return {files[i] for i in kept if files[i] in generated}


def arrange_files(files: list[str], edges, settings: ReadSettings, doc_id: str) -> list[int]:
    """The order of a repository's files (indices into ``files``, which are sorted by path):
    dependency order, path order, or a shuffle seeded by ``settings.seed`` and the document id
    (stable across runs and machines)."""
    if settings.file_order == "dependency":
        return order_files(files, edges)
    order = list(range(len(files)))
    if settings.file_order == "shuffled":
        digest = hashlib.sha256(f"{settings.seed}|{doc_id}".encode()).digest()
        random.Random(int.from_bytes(digest[:8], "little")).shuffle(order)
    elif settings.file_order != "path":
        raise ValueError(f"unknown file order {settings.file_order!r}")
    return order


def read_repository(
    root: str,
    doc_id: str,
    name: str,
    limits: ReadSettings,
    remote: tuple[list[tuple[str, int]], Callable[[str], bytes]] | None = None,
) -> tuple[TextDocument | None, list[Reject]]:
    """A repository folder or archive -> (document with files in dependency order, rejects).

    ``remote`` is ``(listing, read)`` for a repository that is not on local disk (objects
    under a gs:// or s3:// prefix, listed and read through Beam's filesystems)."""
    shown = display_path(root)
    archive = remote is None and is_archive(root)
    if remote is not None:
        entries = _member_entries(*remote, lambda rel: f"{shown}/{rel}", limits)
    elif archive:
        entries = _archive_entries(root, limits)
    else:
        entries = _folder_entries(root, limits)
    files: list[str] = []
    texts: list[str] = []
    rejects: list[Reject] = []
    markers: list[Reject] = []  # empty __init__.py files, kept unless nothing else is
    generated: dict[str, Reject] = {}  # marked generated: rejected unless imported
    for item in entries:
        if isinstance(item, Reject):
            rejects.append(item)
            continue
        rel, content = item
        rel = display_path(rel)
        where = f"{shown}!{rel}" if archive else f"{shown}/{rel}"
        if isinstance(content, RejectError):
            if content.reason == "empty" and posixpath.basename(rel) in PACKAGE_MARKERS:
                markers.append(Reject(where, content.reason, content.detail))
                content = ""  # kept: it makes its folder a package
            else:
                rejects.append(Reject(where, content.reason, content.detail))
                continue
        if rel.lower().endswith(".ipynb"):
            try:
                content, n_outputs = _notebook_text(content)
            except (ValueError, TypeError, AttributeError) as err:
                rejects.append(Reject(where, "bad_notebook", f"{type(err).__name__}: {err}"))
                continue
            if n_outputs:
                rejects.append(
                    Reject(where + "#outputs", "notebook_outputs", f"{n_outputs} outputs dropped")
                )
        screened = screen_file(rel, content)
        if screened and screened[0] == "generated":
            generated[rel] = Reject(where, *screened)  # decided once imports are known
        elif screened:
            rejects.append(Reject(where, *screened))
            continue
        files.append(rel)
        texts.append(content)
    by_path = sorted(range(len(files)), key=lambda i: files[i])
    files = [files[i] for i in by_path]
    texts = [texts[i] for i in by_path]
    root_name = name if not archive else ""
    edges, unparsed = dependency_edges(files, texts, root_name)
    if generated:
        kept = _imported_generated(files, edges, set(generated))
        rejects += [r for rel, r in generated.items() if rel not in kept]
        keep = [i for i, f in enumerate(files) if f not in generated or f in kept]
        if len(keep) < len(files):
            files, texts = [files[i] for i in keep], [texts[i] for i in keep]
            edges, unparsed = dependency_edges(files, texts, root_name)
    if len(files) == len(markers):
        rejects += markers
        rejects.append(Reject(shown, "empty", "no readable text file in the repository"))
        return None, rejects
    order = arrange_files(files, edges, limits, doc_id)
    doc = TextDocument(
        doc_id=doc_id,
        kind=CODE,
        origin=shown,
        texts=[texts[i] for i in order],
        files=[files[i] for i in order],
        title=name,
        dependency_edges=len(edges),
        cycle_files=cycle_members(len(files), edges),
        unparsed_files=unparsed,
        language=main_language(files, texts),
    )
    return doc, rejects
