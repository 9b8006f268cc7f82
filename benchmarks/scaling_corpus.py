"""The scaling benchmark's corpus: the benchmark corpus (books + standard-library packages as
repositories, ``benchmarks/common.py``) replicated under distinct names up to a size.

    python -m benchmarks.scaling_corpus --out /tmp/corpus --corpus-mb 300

Writes ``OUT/books/cKK/<book>.txt`` and ``OUT/repos/<name>-KK/`` (a ``--repos-root`` folder).
Copies are identical by design, so duplicate removal would drop them: runs on this corpus use
``--no-dedup`` to measure the same work scaled. Units (one book, one package) are taken in a
fixed order, copy after copy, until the size is reached, so the mix of books and code stays
that of the base corpus. Files are hard-linked where source and corpus share a file system.

Repositories: the standard-library packages of ``PACKAGES`` that this Python has (3.12 still
has ``lib2to3``; a package missing from an installation is skipped and listed), plus, with
``--extra-repos DIR``, every subfolder or ``.tar.gz``/``.tgz``/``.zip`` archive of DIR (for
example ``benchmarks/dependency_order.py --cache DIR`` downloads of registry packages);
nothing here needs the network.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BOOKS, PACKAGES, STDLIB  # noqa: E402

BOOK_SUFFIXES = (".txt", ".md")


@dataclass(frozen=True)
class Unit:
    """One book file or one repository folder of the base corpus."""

    kind: str  # "book" or "repo"
    name: str  # file name (book) or repository name (repo)
    path: Path
    nbytes: int


def _tree_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _unpack(archive: Path, dest: Path) -> Path:
    """An archive of ``--extra-repos`` unpacked once into ``dest/<stem>``; its folder."""
    stem = archive.name
    for suffix in (".tar.gz", ".tgz", ".zip"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    out = dest / stem
    if not (out / ".unpacked").exists():
        shutil.rmtree(out, ignore_errors=True)
        shutil.unpack_archive(str(archive), str(out))
        (out / ".unpacked").touch()
    return out


def base_units(
    books: Path = BOOKS,
    stdlib: Path = STDLIB,
    packages: tuple[str, ...] = PACKAGES,
    extra_repos: Path | None = None,
    unpack_dir: Path | None = None,
) -> tuple[list[Unit], list[str]]:
    """The base corpus's units (books and repositories interleaved) and the packages missing."""
    units = [
        Unit("book", p.name, p, p.stat().st_size)
        for p in sorted(books.iterdir())
        if p.suffix in BOOK_SUFFIXES and p.is_file()
    ]
    missing = []
    for pkg in packages:
        root = stdlib / pkg
        if not root.is_dir():
            missing.append(pkg)
            continue
        units.append(Unit("repo", pkg, root, sum(f.stat().st_size for f in _tree_files(root))))
    if extra_repos is not None:
        for p in sorted(extra_repos.iterdir()):
            if p.is_file() and p.name.endswith((".tar.gz", ".tgz", ".zip")):
                p = _unpack(p, unpack_dir or extra_repos.parent / f"{extra_repos.name}-unpacked")
            elif not p.is_dir():
                continue
            files = [f for f in _tree_files(p) if f.name != ".unpacked"]
            units.append(Unit("repo", p.name, p, sum(f.stat().st_size for f in files)))
    return interleave(units), missing


def interleave(units: list[Unit]) -> list[Unit]:
    """Books and repositories merged in proportion to their bytes (each kind in its own
    order), so that any prefix of the list, a partial copy, keeps the base corpus's mix."""
    books = [u for u in units if u.kind == "book"]
    repos = [u for u in units if u.kind != "book"]
    tb, tr = sum(u.nbytes for u in books) or 1, sum(u.nbytes for u in repos) or 1
    out, b, r, sb, sr = [], 0, 0, 0, 0
    while b < len(books) or r < len(repos):
        if r >= len(repos) or (b < len(books) and sb / tb <= sr / tr):
            out.append(books[b])
            sb += books[b].nbytes
            b += 1
        else:
            out.append(repos[r])
            sr += repos[r].nbytes
            r += 1
    return out


def plan(units: list[Unit], *, target_bytes: int | None = None, factor: int | None = None):
    """``[(unit, copy)]``: ``factor`` whole copies, or units copy after copy until
    ``target_bytes`` is reached."""
    if factor is not None:
        return [(u, k) for k in range(factor) for u in units]
    out, total, k = [], 0, 0
    while total < target_bytes:
        for u in units:
            out.append((u, k))
            total += u.nbytes
            if total >= target_bytes:
                break
        k += 1
    return out


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def materialize(root: Path, entries) -> dict:
    """Write the plan under ``root`` (``books/cKK/``, ``repos/<name>-KK/``); a summary."""
    n_books = n_repos = nbytes = 0
    for unit, k in entries:
        if unit.kind == "book":
            dst = root / "books" / f"c{k:02d}"
            dst.mkdir(parents=True, exist_ok=True)
            _link_or_copy(str(unit.path), str(dst / unit.name))
            n_books += 1
        else:
            shutil.copytree(
                unit.path,
                root / "repos" / f"{unit.name}-{k:02d}",
                ignore=shutil.ignore_patterns("__pycache__", ".unpacked"),
                copy_function=_link_or_copy,
            )
            n_repos += 1
        nbytes += unit.nbytes
    (root / "repos").mkdir(parents=True, exist_ok=True)
    return {"books": n_books, "repositories": n_repos, "input_bytes": nbytes}


def unit_texts(units: list[Unit]) -> dict[str, str]:
    """Each unit's document text as ``benchmarks/throughput.py``'s ceiling reads it (a book
    stripped; a repository's files in the pipeline's order, each after its path)."""
    from transforms.inputs.reading import ReadSettings, read_book
    from transforms.inputs.repository import read_repository

    out = {}
    for u in units:
        if u.kind == "book":
            out[f"book:{u.name}"] = read_book(str(u.path), "b", ReadSettings()).texts[0]
        else:
            doc, _ = read_repository(str(u.path), f"code/{u.name}", u.name, ReadSettings())
            out[f"repo:{u.name}"] = "".join(
                f"{f}\n{t}" for f, t in zip(doc.files, doc.texts, strict=True)
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--corpus-mb", type=float, default=300.0)
    ap.add_argument("--factor", type=int, help="whole copies instead of --corpus-mb")
    ap.add_argument("--books", type=Path, default=BOOKS)
    ap.add_argument("--extra-repos", type=Path)
    args = ap.parse_args()
    units, missing = base_units(args.books, extra_repos=args.extra_repos)
    entries = plan(units, target_bytes=int(args.corpus_mb * 1e6), factor=args.factor)
    summary = materialize(args.out, entries)
    summary["missing_packages"] = missing
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
