"""Turn the input flags into a sorted list of sources, each with a unique document id.

Runs on the driver before the pipeline starts: it only lists folders (cheap, even for 100,000
files); reading and tokenizing happen on the workers. Ids are derived from names, so the same
inputs give the same ids on any machine; a clash gets ``~2``, ``~3``... in path order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline import remote
from schemas.layout import enclosing_folder, marked_folders
from transforms.documents import Reject, RejectError, TextDocument
from transforms.inputs.archives import ARCHIVE_SUFFIXES
from transforms.inputs.reading import (
    BOOK_SUFFIXES,
    OUTPUT_FOLDER,
    ReadSettings,
    display_path,
    is_output_folder,
    read_book,
    skip_book_dirs,
    walk_folder,
)
from transforms.inputs.records import RECORD_SUFFIXES, read_records, records_to_documents
from transforms.inputs.repository import SKIP_DIRS, read_repository

# Folders of a --repos-root that are caches or version control, never repositories.
CACHE_DIRS = {
    name: why
    for name, why in SKIP_DIRS.items()
    if why in ("version-control metadata", "bytecode cache", "tool cache")
}

BOOK, REPO, RECORDS, HF = "book", "repo", "records", "hf"


@dataclass(frozen=True)
class Source:
    kind: str  # book | repo | records
    path: str  # absolute
    doc_id: str  # document id (records: the prefix of the ids of its rows)
    name: str  # repository name / file name


def _one_per_path(sources: list[Source], rejects: list[Reject]) -> list[Source]:
    """The same file or folder named twice (``--repos X`` and ``--repos-root`` above it, a
    symlinked alias, a book listed and inside a listed folder) is read once: the first
    naming is kept, the others are listed as ``duplicate_input`` rejects."""
    kept: dict[str, Source] = {}
    for src in sources:
        key = src.path if remote.is_remote(src.path) else os.path.realpath(src.path)
        if key in kept:
            rejects.append(
                Reject(
                    display_path(src.path),
                    "duplicate_input",
                    f"the same input as {display_path(kept[key].path)}, which is read once",
                )
            )
            continue
        kept[key] = src
    return list(kept.values())


def _unique(sources: list[Source]) -> list[Source]:
    """Ids made unique: the first (in path order) of a clash keeps its id, the others take the
    next ``~N`` that no source holds, so a file named ``a~2`` beside a clash of ``a`` keeps
    its own id and the clash's second gets ``a~3``."""
    taken = {src.doc_id for src in sources}
    first: set[str] = set()
    last: dict[str, int] = {}
    out = []
    for src in sorted(sources, key=lambda s: (s.doc_id, s.path)):
        if src.doc_id not in first:
            first.add(src.doc_id)
            out.append(src)
            continue
        n = last.get(src.doc_id, 1) + 1
        while f"{src.doc_id}~{n}" in taken:
            n += 1
        last[src.doc_id] = n
        taken.add(f"{src.doc_id}~{n}")
        out.append(replace(src, doc_id=f"{src.doc_id}~{n}"))
    return sorted(out, key=lambda s: s.doc_id)


def _remote_book_sources(arg: str, rejects: list[Reject], output: str | None) -> list[Source]:
    if remote.is_remote_file(arg):
        return [Source(BOOK, arg, f"book/{Path(arg).stem}", Path(arg).name)]
    out = []
    base = arg.rstrip("/")
    listing = remote.list_files(base)
    outputs = marked_folders(rel for rel, _ in listing)
    own = (output or "").rstrip("/")
    if own.startswith(base + "/"):  # this run's --output, before its marker is written
        outputs.add(own[len(base) + 1 :])  # (--output equal to an input: refused up front)
    skipped: set[str] = set()
    for rel, _ in listing:
        path = f"{base}/{rel}"
        top = enclosing_folder(rel, outputs)
        if top is not None:
            if top not in skipped:  # one reject per output folder
                skipped.add(top)
                rejects.append(Reject(f"{base}/{top}".rstrip("/"), *OUTPUT_FOLDER))
            continue
        if os.path.splitext(rel)[1].lower() in BOOK_SUFFIXES:
            out.append(Source(BOOK, path, f"book/{os.path.splitext(rel)[0]}", Path(rel).name))
        else:
            rejects.append(
                Reject(path, "unsupported_type", f"books are {', '.join(BOOK_SUFFIXES)} files")
            )
    return out


def _own_output(output: str | None) -> str | None:
    """The real path of a local --output (the run writes there: never an input)."""
    return os.path.realpath(output) if output and not remote.is_remote(output) else None


def _holds_an_output(folder: str) -> bool:
    try:
        return is_output_folder(folder, os.listdir(folder))
    except OSError:  # unreadable: the repository reader reports it
        return False


def _book_sources(arg: str, rejects: list[Reject], own: str | None = None) -> list[Source]:
    root = os.path.abspath(arg)
    if not os.path.isdir(root) or os.path.islink(root):
        return [Source(BOOK, root, f"book/{Path(root).stem}", Path(root).name)]

    def screen(rel_dir: str, abs_dir: str, names: set):
        if own and os.path.realpath(abs_dir) == own:  # before this run's marker is written
            return OUTPUT_FOLDER
        return skip_book_dirs(rel_dir, abs_dir, names)

    out = []
    for item in walk_folder(root, screen):
        if isinstance(item, Reject):
            rejects.append(item)
            continue
        rel, path = item
        if os.path.splitext(rel)[1].lower() in BOOK_SUFFIXES:
            stem = os.path.splitext(display_path(rel))[0]
            out.append(Source(BOOK, path, f"book/{stem}", os.path.basename(path)))
        else:
            rejects.append(
                Reject(
                    display_path(path),
                    "unsupported_type",
                    f"books are {', '.join(BOOK_SUFFIXES)} files",
                )
            )
    return out


def _repo_source(path: str) -> Source:
    path = path.rstrip("/") if remote.is_remote(path) else os.path.abspath(path)
    name = display_path(os.path.basename(path.rstrip("/")))
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix) and os.path.isfile(path):
            name = name[: -len(suffix)]
            break
    return Source(REPO, path, f"code/{name}", name)


def discover(
    *, books=(), repos=(), repos_root=(), documents=(), hf_dataset=(), output=None
) -> tuple[list[Source], list[Reject]]:
    """All sources named by the flags, sorted by document id, and the rejects found on the way.
    Pipeline outputs inside an input folder (``output``, this run's, and any other) are skipped,
    each listed as a ``skipped_dir`` reject."""
    sources: list[Source] = []
    rejects: list[Reject] = []
    own = _own_output(output)
    for arg in books:
        if remote.is_remote(arg):
            sources += _remote_book_sources(arg, rejects, output)
        else:
            sources += _book_sources(arg, rejects, own)
    for arg in repos:
        sources.append(_repo_source(arg))
    for root in repos_root:
        if remote.is_remote(root):
            tops = sorted(
                {rel.split("/", 1)[0] for rel, _ in remote.list_files(root) if "/" in rel}
            )
            sources += [_repo_source(f"{root.rstrip('/')}/{top}") for top in tops]
            continue
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except OSError as err:
            rejects.append(Reject(display_path(root), "unreadable", err.strerror or str(err)))
            continue
        quiet = [e for e in entries if e.name in CACHE_DIRS and e.is_dir(follow_symlinks=False)]
        if quiet:  # caches and version control are no repositories: one line for them all
            rejects.append(
                Reject(
                    display_path(root),
                    "skipped_dir",
                    f"{len(quiet)} folders that are no repositories: "
                    + ", ".join(f"{e.name} ({CACHE_DIRS[e.name]})" for e in quiet),
                )
            )
        for entry in entries:
            if entry in quiet:
                continue
            if entry.is_dir(follow_symlinks=False) and (
                os.path.realpath(entry.path) == own or _holds_an_output(entry.path)
            ):
                rejects.append(Reject(display_path(entry.path), *OUTPUT_FOLDER))
                continue
            if entry.is_dir(follow_symlinks=False) or (
                entry.is_file(follow_symlinks=False)
                and entry.name.lower().endswith(ARCHIVE_SUFFIXES)
            ):
                sources.append(_repo_source(entry.path))
            else:
                rejects.append(
                    Reject(
                        display_path(entry.path),
                        "not_a_repository",
                        "--repos-root holds repositories as folders or .zip/.tar.gz archives",
                    )
                )
    for arg in documents:
        path = arg if remote.is_remote(arg) else os.path.abspath(arg)
        if not path.endswith(RECORD_SUFFIXES):
            rejects.append(
                Reject(
                    display_path(path),
                    "unsupported_type",
                    f"--documents takes {', '.join(RECORD_SUFFIXES)} files",
                )
            )
            continue
        sources.append(Source(RECORDS, path, f"docs/{Path(path).stem}", os.path.basename(path)))
    for spec in hf_dataset:
        from pipeline.hf_input import doc_prefix

        sources.append(Source(HF, spec, doc_prefix(spec), spec))
    return _unique(_one_per_path(sources, rejects)), rejects


def discover_inputs(config) -> tuple[list[Source], list[Reject]]:
    """:func:`discover` of a run's input flags (``config``: a ``BuildConfig``; no input flag:
    the embedded demo corpus). The driver lists the inputs with it, and so does the head start
    (``pipeline/head_start.py``), which must see the same sources under the same ids."""
    from pipeline.demo import demo_repositories

    return discover(
        books=config.books,
        repos=demo_repositories() if config.demo else config.repos,
        repos_root=config.repos_root,
        documents=config.documents,
        hf_dataset=config.hf_dataset,
        output=config.output,
    )


def _remote_records(src: Source, limits: ReadSettings):
    """A records file on gs:// / s3://: read into a local temporary copy, then as usual."""
    import tempfile

    suffix = next(s for s in RECORD_SUFFIXES if src.path.endswith(s))
    data = remote.read_bytes(src.path, 8 * limits.max_file_bytes)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "records" + suffix)
        with open(local, "wb") as fh:
            fh.write(data)
        yield from read_records(local, src.doc_id, limits, origin=src.path)


def _hf_items(src: Source, limits: ReadSettings):
    from pipeline.hf_input import HFInputError, dataset_rows

    try:
        for item in records_to_documents(dataset_rows(src.path), src.doc_id, limits, src.path):
            if isinstance(item, TextDocument):
                item.source = src.doc_id
            yield item
    except HFInputError as err:
        raise RejectError("unreadable", str(err)) from None


def read_source(src: Source, limits: ReadSettings) -> list[TextDocument | Reject]:
    """What one source holds: its documents and the rejects met on the way (workers run
    this; ``pipeline.count_tokens`` too). Raises RejectError for a source rejected whole."""
    if src.kind == BOOK:
        data = None
        if remote.is_remote(src.path):
            data = remote.read_bytes(src.path, limits.max_file_bytes)
        return [read_book(src.path, src.doc_id, limits, data=data)]
    if src.kind == REPO:
        listing = None
        if remote.is_remote(src.path):
            base, limit = src.path.rstrip("/"), limits.max_file_bytes
            listing = (
                remote.list_files(base),
                lambda rel: remote.read_bytes(f"{base}/{rel}", limit),
            )
        doc, rejects = read_repository(src.path, src.doc_id, src.name, limits, remote=listing)
        return [*rejects, *([doc] if doc else [])]
    if src.kind == HF:
        return _hf_items(src, limits)  # a generator: rows stream from the dataset
    if src.kind == RECORDS:
        reader = _remote_records if remote.is_remote(src.path) else None
        items = list(reader(src, limits) if reader else read_records(src.path, src.doc_id, limits))
        for item in items:
            if isinstance(item, TextDocument):
                item.source = src.doc_id
        return items
    raise ValueError(f"unknown source kind {src.kind!r}")
