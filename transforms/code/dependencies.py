"""Which files of a repository import which: import extraction and resolution inside the repo.

``dependency_edges(files, texts)`` returns ``(edges, n_unparsed)`` where ``edges`` holds pairs
``(i, j)``: file ``i`` imports file ``j`` (indices into ``files``). Only imports that resolve
to a file of the same repository give an edge; the standard library and third-party packages
give none. Languages and rules:

- Python (``.py``, ``.pyi``, notebooks): ``ast`` (a line scan for files it cannot parse, counted
  in ``n_unparsed``); module names from the package structure, empty ``__init__.py`` files
  included, and Python 3's absolute-import rules (:mod:`transforms.code.python_imports`).
- JavaScript / TypeScript: ``import ... from``, ``export ... from``, ``import()``, ``require()``
  and ``/// <reference path>`` of relative specifiers, comments removed first
  (:mod:`transforms.code.js_imports`), trying the extensions and ``index`` files Node tries for
  a JavaScript importer and TypeScript tries for a TypeScript one.
- Go: import paths under the ``module`` of ``go.mod`` (or ending in a folder of the repo) depend
  on every non-test ``.go`` file of that package folder.
- Rust: ``mod x;`` and ``use crate::`` / ``self::`` / ``super::`` paths, resolved to ``x.rs`` or
  ``x/mod.rs`` the way rustc looks for modules.
- C / C++: ``#include "x"`` relative to the including file, then any repo file whose path ends
  in ``x``; ``#include <x>`` only by that path suffix (so ``<vector>`` gives no edge).
- Java / Kotlin / Scala: ``import a.b.C`` -> a file ending in ``a/b/C.java``; ``a.b.*`` -> every
  file of the folder ending in ``a/b``.

Regex extraction (every language but Python) can see an import inside a string, or for Go,
Rust, C and the JVM inside a comment; the cost is an extra edge, never a lost file. Where
several files match, the one nearest to the importing file wins (longest shared folder prefix,
then path order), so the result is deterministic.
"""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict

from transforms.code.js_imports import candidate_paths, js_specifiers
from transforms.code.python_imports import PythonModules

PY = (".py", ".pyi", ".ipynb")  # notebooks arrive as their cell sources
JS = (".js", ".jsx", ".mjs", ".cjs", ".ts", ".tsx", ".mts", ".cts")
GO = (".go",)
RUST = (".rs",)
C_FAMILY = (".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".hxx", ".inl", ".ipp", ".cu", ".cuh")
JVM = (".java", ".kt", ".kts", ".scala")

_GO_BLOCK = re.compile(r"^import\s*\(([^)]*)\)", re.M)
_GO_SINGLE = re.compile(r'^import\s+(?:[\w.]+\s+)?"([^"]+)"', re.M)
_GO_QUOTED = re.compile(r'"([^"]+)"')
_GO_MODULE = re.compile(r"^module\s+(\S+)", re.M)
_RUST_MOD = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", re.M)
_RUST_USE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+((?:crate|self|super)(?:::\w+)+)", re.M)
_C_INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"\n]+)[>"]', re.M)
_JVM_IMPORT = re.compile(r"^\s*import\s+(?:static\s+)?(\w+(?:\.\w+)*(?:\.\*)?)", re.M)


def language_of(path: str) -> str | None:
    """The language family a path is parsed as, or None."""
    ext = posixpath.splitext(path)[1].lower()
    for name, exts in (
        ("python", PY),
        ("javascript", JS),
        ("go", GO),
        ("rust", RUST),
        ("c", C_FAMILY),
        ("jvm", JVM),
    ):
        if ext in exts:
            return name
    return None


def _shared_prefix(a: str, b: str) -> int:
    pa, pb = a.split("/")[:-1], b.split("/")[:-1]
    n = 0
    for x, y in zip(pa, pb, strict=False):
        if x != y:
            break
        n += 1
    return n


class _Repo:
    """Lookup tables over the repository's file paths."""

    def __init__(self, files: list[str], root_name: str, texts: list[str]):
        self.files = files
        self.index = {f: i for i, f in enumerate(files)}
        self.by_suffix: dict[str, list[int]] = defaultdict(list)  # "a/b.h" -> files ending so
        self.by_dir: dict[str, list[int]] = defaultdict(list)
        for i, f in enumerate(files):
            parts = f.split("/")
            for k in range(len(parts)):
                self.by_suffix["/".join(parts[k:])].append(i)
            self.by_dir[posixpath.dirname(f)].append(i)
        self.python = PythonModules(files, root_name, self.nearest)
        self.go_module = None
        if "go.mod" in self.index:
            m = _GO_MODULE.search(texts[self.index["go.mod"]])
            self.go_module = m.group(1) if m else None

    def nearest(self, candidates: list[int], importer: int) -> int | None:
        cands = [c for c in candidates if c != importer]
        if not cands:
            return None
        src = self.files[importer]
        return min(cands, key=lambda c: (-_shared_prefix(src, self.files[c]), self.files[c]))


def _resolve_js(repo: _Repo, i: int, text: str) -> set[int]:
    deps = set()
    for spec in js_specifiers(text):
        if not spec.startswith("."):
            continue
        for cand in candidate_paths(repo.files[i], spec.split("?")[0]):
            j = repo.index.get(cand)
            if j is not None and j != i:
                deps.add(j)
                break
    return deps


def _resolve_go(repo: _Repo, i: int, text: str) -> set[int]:
    paths = [m.group(1) for m in _GO_SINGLE.finditer(text)]
    for block in _GO_BLOCK.finditer(text):
        paths.extend(_GO_QUOTED.findall(block.group(1)))
    deps = set()
    for p in paths:
        folder = None
        if repo.go_module and (p == repo.go_module or p.startswith(repo.go_module + "/")):
            folder = p[len(repo.go_module) + 1 :]
        else:
            parts = p.split("/")
            for k in range(len(parts)):  # longest suffix of the import path that is a folder
                cand = "/".join(parts[k:])
                if cand in repo.by_dir and k > 0:
                    folder = cand
                    break
        if folder is None:
            continue
        for j in repo.by_dir.get(folder, []):
            f = repo.files[j]
            if f.endswith(".go") and not f.endswith("_test.go") and j != i:
                deps.add(j)
    return deps


def _rust_module_dir(f: str) -> str:
    """The folder in which ``mod x;`` of file ``f`` looks for ``x.rs`` / ``x/mod.rs``."""
    d, base = posixpath.split(f)
    if base in ("lib.rs", "main.rs", "mod.rs") or "/bin/" in f"/{f}":
        return d
    return posixpath.join(d, posixpath.splitext(base)[0])


def _rust_crate_root(repo: _Repo, f: str) -> str:
    d = posixpath.dirname(f)
    while True:
        for root in ("lib.rs", "main.rs"):
            if posixpath.join(d, root).lstrip("/") in repo.index:
                return d
        if not d:
            return ""
        d = posixpath.dirname(d)


def _rust_lookup(repo: _Repo, folder: str, segments: list[str]) -> int | None:
    for k in range(len(segments), 0, -1):  # crate::a::b::Item -> a/b.rs, else a.rs
        rel = posixpath.join(folder, *segments[:k]) if folder else "/".join(segments[:k])
        for cand in (rel + ".rs", rel + "/mod.rs"):
            if cand in repo.index:
                return repo.index[cand]
    return None


def _resolve_rust(repo: _Repo, i: int, text: str) -> set[int]:
    f = repo.files[i]
    deps = set()
    mdir = _rust_module_dir(f)
    for m in _RUST_MOD.finditer(text):
        j = _rust_lookup(repo, mdir, [m.group(1)])
        if j is not None and j != i:
            deps.add(j)
    for m in _RUST_USE.finditer(text):
        segs = m.group(1).split("::")
        head, rest = segs[0], segs[1:]
        if head == "crate":
            folder = _rust_crate_root(repo, f)
        elif head == "self":
            folder = mdir
        else:  # super: the parent module's folder
            folder = posixpath.dirname(mdir)
            while rest and rest[0] == "super":
                folder, rest = posixpath.dirname(folder), rest[1:]
        j = _rust_lookup(repo, folder, rest)
        if j is not None and j != i:
            deps.add(j)
    return deps


def _resolve_c(repo: _Repo, i: int, text: str) -> set[int]:
    deps = set()
    d = posixpath.dirname(repo.files[i])
    for m in _C_INCLUDE.finditer(text):
        quote, name = m.group(1), m.group(2).strip()
        j = None
        if quote == '"':
            j = repo.index.get(posixpath.normpath(posixpath.join(d, name)))
        if j is None:
            j = repo.nearest(repo.by_suffix.get(posixpath.normpath(name), []), i)
        if j is not None and j != i:
            deps.add(j)
    return deps


def _resolve_jvm(repo: _Repo, i: int, text: str) -> set[int]:
    deps = set()
    ext = posixpath.splitext(repo.files[i])[1]
    exts = (".java", ".kt", ".scala") if ext != ".kts" else (".kt",)
    for m in _JVM_IMPORT.finditer(text):
        name = m.group(1)
        parts = name.split(".")
        if parts[-1] == "*":
            folder_suffix = "/".join(parts[:-1])
            for folder, members in repo.by_dir.items():
                if folder == folder_suffix or folder.endswith("/" + folder_suffix):
                    deps.update(j for j in members if repo.files[j].endswith(JVM) and j != i)
            continue
        for k in range(len(parts), 1, -1):  # a.b.C or a.b.C.member (static import)
            hits = [j for e in exts for j in repo.by_suffix.get("/".join(parts[:k]) + e, [])]
            j = repo.nearest(hits, i)
            if j is not None:
                deps.add(j)
                break
    return deps


_RESOLVERS = {
    "javascript": _resolve_js,
    "go": _resolve_go,
    "rust": _resolve_rust,
    "c": _resolve_c,
    "jvm": _resolve_jvm,
}


def main_language(files: list[str], texts: list[str]) -> str:
    """The language family holding most characters of a repository, or ``"other"``."""
    size: dict[str, int] = {}
    for f, t in zip(files, texts, strict=True):
        lang = language_of(f)
        if lang:
            size[lang] = size.get(lang, 0) + len(t)
    return max(sorted(size), key=lambda k: size[k]) if size else "other"


def dependency_edges(
    files: list[str], texts: list[str], root_name: str = ""
) -> tuple[list[tuple[int, int]], int]:
    """``([(importer, imported), ...], n_unparsed)``, sorted and without duplicates."""
    repo = _Repo(files, root_name, texts)
    edges: set[tuple[int, int]] = set()
    unparsed = 0
    for i, (f, text) in enumerate(zip(files, texts, strict=True)):
        lang = language_of(f)
        if lang is None:
            continue
        if lang == "python":
            deps, parsed = repo.python.dependencies(i, text)
            unparsed += not parsed
        else:
            deps = _RESOLVERS[lang](repo, i, text)
        edges.update((i, j) for j in deps if j != i)
    return sorted(edges), unparsed
