"""Build the ablation's corpus from what a machine already has: books plus real Python code.

    python -m benchmarks.ablation_corpus --books-archive books.tar.xz --out corpus \\
        --packages torch,transformers,sympy --code-mb 120

Writes ``OUT/books/`` (the books, one file each) and ``OUT/code/<repo>/`` (a ``--repos-root``
folder: one repository per subfolder) and ``OUT/corpus.json`` (what was taken, sizes).

Code comes from the running Python: its standard library (each top-level package one
repository, as the pipeline's demo corpus does) and the installed sources of ``--packages``
(found with ``importlib.util.find_spec``, never imported). The GPU machine has no network, but
it holds the sources of torch, transformers, scipy, jax and more, so only the books travel.

A package larger than ``--max-repo-mb`` of ``.py`` is split into its subpackages, recursively
(``transformers/models/llama`` becomes the repository ``transformers.models.llama``: modeling,
configuration and tokenization files that import one another), and the package's own modules
form one more repository. Repositories under ``--min-repo-kb`` are left out. Only ``.py`` files
are copied. When the total exceeds ``--code-mb``, repositories are taken in a fixed
pseudo-random order (by a hash of the name) until it is reached, so the choice does not depend
on the machine's file-system order. The same Python installation and flags give the same corpus.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import sysconfig
import tarfile
from pathlib import Path

SKIP = {"__pycache__", ".git", "site-packages", "node_modules"}


def py_files(root: Path) -> list[Path]:
    """``.py`` files under ``root``, sorted, symbolic links never followed."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP)
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.endswith(".py") and not p.is_symlink() and p.is_file():
                out.append(p)
    return out


def size_of(files: list[Path]) -> int:
    return sum(p.stat().st_size for p in files)


def split_package(root: Path, name: str, max_bytes: int) -> list[tuple[str, Path, list[Path]]]:
    """(repository name, its root, its files): the package whole when small enough, else its
    own modules as one repository and each subpackage split the same way."""
    files = py_files(root)
    if size_of(files) <= max_bytes:
        return [(name, root, files)]
    own = sorted(p for p in root.iterdir() if p.suffix == ".py" and p.is_file())
    out = [(name, root, own)] if own else []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        if sub.name not in SKIP and not sub.name.startswith("."):
            out += split_package(sub, f"{name}.{sub.name}", max_bytes)
    return out


def package_roots(packages: list[str]) -> list[tuple[str, Path]]:
    """(name, source folder) of the standard library's packages and of ``packages``."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    roots = [
        (f"stdlib.{p.name}", p)
        for p in sorted(stdlib.iterdir())
        if p.is_dir() and (p / "__init__.py").is_file() and p.name not in {"test", "idlelib"}
    ]
    for name in packages:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            print(f"  {name}: not installed as a package here, skipped", file=sys.stderr)
            continue
        roots.append((name, Path(locations[0])))
    return roots


def extract_books(archive: str | None, books: str | None, out: Path, limit: int = 0) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    if archive:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".txt")]
            for m in members:
                data = tar.extractfile(m).read()
                (out / Path(m.name).name).write_bytes(data)
    if books:
        for p in sorted(Path(books).glob("*.txt")):
            shutil.copy(p, out / p.name)
    if limit:  # keep the ``limit`` smallest books (smoke runs)
        for p in sorted(out.glob("*.txt"), key=lambda p: (p.stat().st_size, p.name))[limit:]:
            p.unlink()
    return sorted(p.name for p in out.glob("*.txt"))


def order_key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def build(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    books = extract_books(args.books_archive, args.books, out / "books", args.books_limit)
    max_bytes = int(args.max_repo_mb * 1e6)
    repos: list[tuple[str, Path, list[Path]]] = []
    for name, root in package_roots([p for p in args.packages.split(",") if p]):
        repos += split_package(root, name, max_bytes)
    repos = [r for r in repos if size_of(r[2]) >= args.min_repo_kb * 1000]
    repos.sort(key=lambda r: order_key(r[0]))
    budget = int(args.code_mb * 1e6)
    taken, total = [], 0
    for name, root, files in repos:
        n = size_of(files)
        if total + n > budget:
            continue
        taken.append((name, root, files))
        total += n
    code = out / "code"
    for name, root, files in sorted(taken):
        for f in files:
            dest = code / name / f.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
    summary = {
        "python": sys.version.split()[0],
        "books": books,
        "books_bytes": sum((out / "books" / b).stat().st_size for b in books),
        "repositories": len(taken),
        "code_bytes": total,
        "candidates": len(repos),
        "settings": {
            "packages": args.packages,
            "max_repo_mb": args.max_repo_mb,
            "min_repo_kb": args.min_repo_kb,
            "code_mb": args.code_mb,
            "books_limit": args.books_limit,
        },
        "repository_bytes": {name: size_of(files) for name, _, files in sorted(taken)},
    }
    (out / "corpus.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ablation_corpus", description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--books-archive", help="a .tar.xz of book .txt files")
    p.add_argument("--books", help="a folder of book .txt files")
    p.add_argument("--books-limit", type=int, default=0, help="keep the N smallest books (0: all)")
    p.add_argument("--packages", default="", help="installed packages to take code from")
    p.add_argument("--max-repo-mb", type=float, default=3.0)
    p.add_argument("--min-repo-kb", type=float, default=20.0)
    p.add_argument("--code-mb", type=float, default=120.0, help="at most this much code")
    a = p.parse_args(argv)
    s = build(a)
    print(
        f"corpus {a.out}: {len(s['books'])} books ({s['books_bytes'] / 1e6:.1f} MB), "
        f"{s['repositories']} of {s['candidates']} repositories ({s['code_bytes'] / 1e6:.1f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
