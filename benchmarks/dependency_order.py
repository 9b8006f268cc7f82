"""Dependency order on real packages fetched from the registries at run time (needs network).

    python benchmarks/dependency_order.py                 # fetch, run, check, record
    python benchmarks/dependency_order.py --cache /tmp/p  # keep the downloads for a re-run
    python benchmarks/dependency_order.py --pipeline-repo /tmp/old --no-record  # another checkout

Fetches the packages of ``PACKAGES`` (Python and C from PyPI source distributions, Rust crates
inside PyPI source distributions, JavaScript and TypeScript with ``npm pack`` when npm is
installed; Go is not covered: no Go toolchain here), runs ``pipeline.run`` on the archives,
then checks every document with a checker that shares no code with the pipeline's resolver:
its own archive reader, its own import parsing (``ast`` for Python; regular expressions
for JavaScript / TypeScript, Rust and C) and resolution rules, its own cycle finding.

Per package: files in the archive and in the document, rejects, files accounted for neither
way, the checker's edges (between files of the document) and the pipeline's, files on a cycle
of the checker's graph, **violations** (an imported file placed after its importer, outside a
cycle) and **false rejects** (a rejected ``__init__.py``; a duplicate whose kept copy is in the
same package; a module rejected as generated or empty that a kept file imports; a
``build``/``dist`` file that package.json publishes but the document lacks). Other rejected
files that a kept file imports (minified bundles, vendored folders, gitignored files) are
listed under the table, as are all ``generated`` rejects, for review. Nothing fetched is
committed: downloads go to a temporary folder (or ``--cache``), removed at the end.

``--pipeline-repo`` runs the pipeline of another checkout (``git archive <commit> | tar -x -C
DIR``) under the same checker, for a before / after comparison.
"""

from __future__ import annotations

import argparse
import ast
import json
import posixpath
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import QWEN3, REPO, record, table  # noqa: E402

# "name version", two spaces apart. PyPI sdists: Python (+ C in markupsafe and pyyaml); the
# last four carry Rust crates. npm: JavaScript; zod, immer, ajv also ship TypeScript sources.
PYPI = """flask 3.0.3  werkzeug 3.0.4  click 8.1.7  jinja2 3.1.4  requests 2.32.3  httpx 0.27.2
attrs 24.2.0  rich 13.9.2  packaging 24.1  pluggy 1.5.0  itsdangerous 2.2.0  markupsafe 2.1.5
idna 3.10  pyyaml 6.0.2  tokenizers 0.20.0  safetensors 0.4.5  rpds-py 0.20.0  jiter 0.5.0"""
NPM = """axios 1.7.7  lodash-es 4.17.21  zod 3.23.8  preact 10.24.3  express 4.21.0  commander 12.1.0
yargs 17.7.2  uuid 10.0.0  semver 7.6.3  chalk 5.3.0  debug 4.3.7  ajv 8.17.1  immer 10.1.1"""
PACKAGES = [(reg, *spec.split()) for reg, text in (("pypi", PYPI), ("npm", NPM)) for spec in
            re.split(r"\s{2,}|\n", text)]  # fmt: skip
LANGUAGE = {
    **dict.fromkeys((".py", ".pyi"), "Python"),
    **dict.fromkeys((".js", ".mjs", ".cjs", ".jsx"), "JavaScript"),
    **dict.fromkeys((".ts", ".mts", ".cts", ".tsx"), "TypeScript"),
    ".rs": "Rust",
    **dict.fromkeys((".c", ".h"), "C"),
}


# ---- fetching ---------------------------------------------------------------------------


def _pypi_sdist(name: str, version: str, dest: Path) -> Path:
    """The sdist from PyPI's simple index (the JSON form of what pip reads). ``pip download
    --no-binary :all:`` also works for the pure-Python ones, but it prepares metadata, which
    for maturin projects needs crates.io."""
    req = urllib.request.Request(
        f"https://pypi.org/simple/{name}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    files = json.load(urllib.request.urlopen(req, timeout=60))["files"]
    want = re.sub(r"[-_.]+", "_", f"{name}-{version}").lower()
    for f in files:
        fn = f["filename"]
        if re.sub(r"[-_.]+", "_", fn).lower() in (f"{want}_tar_gz", f"{want}_zip"):
            path = dest / fn
            if not path.exists():
                urllib.request.urlretrieve(f["url"], path)
            return path
    raise LookupError(f"no sdist of {name} {version} on PyPI")


def fetch(dest: Path) -> list[tuple[str, str, Path]]:
    out = []
    npm = shutil.which("npm")
    if not npm:
        print("npm is not installed: the npm packages are skipped")
    for registry, name, version in PACKAGES:
        try:
            if registry == "pypi":
                path = _pypi_sdist(name, version, dest)
            elif npm:
                tgz = dest / f"{name}-{version}.tgz"
                if not tgz.exists():
                    proc = subprocess.run(
                        [npm, "pack", f"{name}@{version}", "--silent"],
                        cwd=dest,
                        capture_output=True,
                        text=True,
                        timeout=300,
                    )
                    if proc.returncode:
                        raise LookupError(proc.stderr.strip()[:200])
                path = tgz
            else:
                continue
        except (OSError, LookupError, subprocess.SubprocessError) as err:
            print(f"skipped {registry}:{name}@{version}: {err}")
            continue
        out.append((registry, f"{name} {version}", path.resolve()))
    return out


def archive_files(path: Path) -> dict[str, bytes]:
    """Regular files of an archive; one top folder shared by all is stripped."""
    files: dict[str, bytes] = {}
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    files[info.filename] = zf.read(info)
    else:
        with tarfile.open(path) as tf:
            for m in tf.getmembers():
                if m.isfile():
                    files[m.name] = tf.extractfile(m).read()
    tops = {name.split("/", 1)[0] for name in files}
    if len(tops) == 1 and all("/" in name for name in files):
        top = tops.pop() + "/"
        files = {name[len(top) :]: data for name, data in files.items()}
    return files


# ---- the independent checker -------------------------------------------------------------


class Checker:
    """Imports between the files of one package, resolved with rules of its own."""

    def __init__(self, texts: dict[str, str]):
        self.texts = texts
        self.paths = set(texts)
        self.packages = {posixpath.dirname(p) for p in texts if p.endswith("/__init__.py")}
        if "__init__.py" in texts:
            self.packages.add("")
        # sys.path roots: the archive root and every folder directly above a top package
        # (registry archives are never a package at their root).
        self.roots = {""} | {
            posixpath.dirname(d) for d in self.packages if posixpath.dirname(d) not in self.packages
        }

    def imports(self, path: str) -> set[str]:
        text = self.texts[path]
        ext = posixpath.splitext(path)[1]
        if ext in (".py", ".pyi"):
            return self._python(path, text)
        if LANGUAGE.get(ext) in ("JavaScript", "TypeScript"):
            return self._js(path, text)
        if ext == ".rs":
            return self._rust(path, text)
        if ext in (".c", ".h"):
            return self._c(path, text)
        return set()

    # Python: folder walks, as the import system does over sys.path entries.
    def _module_file(self, folder: str, dotted: str, stub: bool = False) -> str | None:
        """``x.py`` or ``x/__init__.py`` under ``folder``; a stub (``.pyi``) importer sees
        stubs first, as type checkers do, and a ``.py`` importer a stub only without a module."""
        base = posixpath.join(folder, *dotted.split(".")) if dotted else folder
        exts = (".pyi", ".py") if stub else (".py", ".pyi")
        for ext in exts:
            for cand in (base + ext, posixpath.join(base, "__init__" + ext)):
                cand = cand.lstrip("/")
                if cand in self.paths:
                    return cand
        return None

    def _absolute(self, importer: str, dotted: str, exact: bool) -> str | None:
        here = posixpath.dirname(importer)
        roots = sorted(self.roots)
        if here not in self.packages:
            roots = [here, *roots]  # a script's own folder comes first on sys.path
        parts = dotted.split(".")
        for k in range(len(parts), 0 if not exact else len(parts) - 1, -1):
            for root in roots:
                hit = self._module_file(root, ".".join(parts[:k]), importer.endswith(".pyi"))
                if hit:
                    return hit  # the importer itself included: found, dropped by the caller
        return None

    def _python(self, path: str, text: str) -> set[str]:
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            return set()
        out = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                out |= {self._absolute(path, a.name, False) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level:
                folder = posixpath.dirname(path)
                for _ in range(node.level - 1):
                    folder = posixpath.dirname(folder) if folder else None
                    if folder is None:
                        break
                if folder is None:
                    continue
                mod, stub = node.module or "", path.endswith(".pyi")
                for a in node.names:
                    sub = self._module_file(folder, f"{mod}.{a.name}".strip("."), stub)
                    out.add(sub or self._module_file(folder, mod, stub))
            elif isinstance(node, ast.ImportFrom):
                for a in node.names:
                    sub = self._absolute(path, f"{node.module}.{a.name}", True)
                    out.add(sub or self._absolute(path, node.module, False))
        out.discard(None)
        out.discard(path)
        return out

    # JavaScript / TypeScript: relative specifiers, Node's and TypeScript's lookups.
    _JS_BLOCK = re.compile(r"/\*[\s\S]*?\*/")
    _JS_LINE = re.compile(r"(?<![:'\"\\])//[^\n]*")
    _JS = re.compile(
        r"""\b(?:from|import)\s*['"](\.[^'"]*)['"]|\b(?:require|import)\s*\(\s*['"](\.[^'"]*)['"]\s*\)"""
    )
    _NODE = (".js", ".mjs", ".cjs", ".jsx", ".json", ".ts", ".tsx", ".d.ts")
    _TSC = (".ts", ".tsx", ".d.ts", ".js", ".jsx", ".mjs", ".cjs", ".json")

    def _js(self, path: str, text: str) -> set[str]:
        code = self._JS_LINE.sub("", self._JS_BLOCK.sub("", text))
        ts = re.search(r"\.[mc]?tsx?$", path) is not None  # TypeScript resolves for .ts, .d.ts
        out = set()
        for m in self._JS.finditer(code):
            rel = m.group(1) or m.group(2)
            spec = posixpath.normpath(posixpath.join(posixpath.dirname(path), rel))
            stem, ext = posixpath.splitext(spec)
            tries = self._TSC if ts else self._NODE
            cands = [spec, *(spec + e for e in tries), *(f"{spec}/index{e}" for e in tries)]
            if ext in (".js", ".mjs", ".cjs", ".jsx"):  # "./x.js" written in TypeScript sources
                swap = [stem + ".ts", stem + ".tsx", stem + ".d.ts"]
                cands = swap + cands if ts else cands + swap
            hit = next((c for c in cands if c in self.paths and c != path), None)
            if hit:
                out.add(hit)
        return out

    # Rust: "mod x;" (with #[path]) and "use crate::a::b" / "use crate::{a, b}".
    _RS_MOD = re.compile(
        r'(?:#\[path\s*=\s*"([^"]+)"\]\s*)?(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;'
    )
    _RS_USE = re.compile(r"\buse\s+crate::(\{[^}]*\}|[\w:]+)")

    def _rust(self, path: str, text: str) -> set[str]:
        text = re.sub(r"//[^\n]*", "", text)
        folder, name = posixpath.split(path)
        own = (
            folder if name in ("lib.rs", "main.rs", "mod.rs") else posixpath.join(folder, name[:-3])
        )
        out = set()
        for attr, mod in self._RS_MOD.findall(text):
            if attr:  # #[path = "..."]: relative to the declaring file's folder
                cands = [posixpath.normpath(posixpath.join(folder, attr))]
            else:
                cands = [posixpath.join(own, mod + ".rs"), posixpath.join(own, mod, "mod.rs")]
            out |= {next((c for c in cands if c in self.paths), None)} - {None}
        root = folder
        while root and not any(
            posixpath.join(root, f) in self.paths for f in ("lib.rs", "main.rs")
        ):
            root = posixpath.dirname(root)
        for group in self._RS_USE.findall(text):
            heads = (
                [g.strip().split("::") for g in group.strip("{}").split(",")]
                if "{" in group
                else [group.split("::")]
            )
            for segs in heads:
                segs = [s for s in segs if re.fullmatch(r"\w+", s)]
                for k in range(len(segs), 0, -1):
                    base = posixpath.join(root, *segs[:k])
                    hit = next(
                        (c for c in (base + ".rs", base + "/mod.rs") if c in self.paths), None
                    )
                    if hit:
                        out.add(hit)
                        break
        out.discard(path)
        return out

    # C: #include "x" next to the includer, at the root, or as a unique path suffix.
    def _c(self, path: str, text: str) -> set[str]:
        out = set()
        for name in re.findall(r'^\s*#\s*include\s*"([^"]+)"', text, re.M):
            cands = [posixpath.normpath(posixpath.join(posixpath.dirname(path), name)), name]
            hit = next((c for c in cands if c in self.paths), None)
            if hit is None:
                ends = [p for p in self.paths if p.endswith("/" + name)]
                hit = ends[0] if len(ends) == 1 else None
            if hit and hit != path:
                out.add(hit)
        return out


def components(nodes: list[str], edges: set[tuple[str, str]]) -> dict[str, int]:
    """Strongly connected components (Kosaraju, iterative)."""
    succ, pred = defaultdict(list), defaultdict(list)
    for a, b in edges:
        succ[a].append(b)
        pred[b].append(a)
    seen, finish = set(), []
    for start in nodes:
        if start in seen:
            continue
        seen.add(start)
        stack = [(start, iter(succ[start]))]
        while stack:
            node, it = stack[-1]
            nxt = next((n for n in it if n not in seen), None)
            if nxt is None:
                finish.append(node)
                stack.pop()
            else:
                seen.add(nxt)
                stack.append((nxt, iter(succ[nxt])))
    comp: dict[str, int] = {}
    for start in reversed(finish):
        if start in comp:
            continue
        comp[start] = len(comp)
        todo, cid = [start], comp[start]
        while todo:
            for p in pred[todo.pop()]:
                if p not in comp:
                    comp[p] = cid
                    todo.append(p)
    return comp


def published_build_files(files: dict[str, bytes]) -> set[str]:
    """Files under build/ or dist/ that a package.json's entry points or ``files`` name."""
    out = set()
    for path, data in files.items():
        if posixpath.basename(path) != "package.json" or "node_modules/" in path:
            continue
        try:
            meta = json.loads(data)
        except ValueError:
            continue
        here = posixpath.dirname(path)
        blob = json.dumps([meta.get(k) for k in ("main", "module", "exports", "bin", "files")])
        for top in ("build", "dist"):
            if re.search(rf'"(?:\./)?{top}(?:/|")', blob):
                prefix = posixpath.join(here, top) + "/"
                out |= {p for p in files if p.startswith(prefix)}
    return out


def check_package(doc: dict, files: dict[str, bytes], rejects: list[dict]) -> dict:
    where = doc["origin"] + "!"  # an archive member's reject path: ARCHIVE!member
    rejected = {r["path"][len(where) :]: r for r in rejects if r["path"].startswith(where)}
    texts = {p: d.decode("utf-8", "replace") for p, d in files.items()}
    checker = Checker(texts)
    order = {f: k for k, f in enumerate(doc["files"])}
    all_edges = {(a, b) for a in texts if a in order for b in checker.imports(a)}
    edges = {(a, b) for a, b in all_edges if b in order}
    comp = components(doc["files"], edges)
    violations = sorted((a, b) for a, b in edges if comp[a] != comp[b] and order[b] > order[a])
    unaccounted = [p for p in files if p not in order and p not in rejected]
    false, other = {}, {}  # false: against the targets; other: imported, noted
    for path, r in rejected.items():
        kept = re.search(r"of (\S+?)!\S+, which is kept", r["detail"])
        if path.endswith("__init__.py") and r["reason"] not in ("gitignored", "skipped_dir"):
            false[path] = f"{r['reason']} __init__.py"
        elif r["reason"] == "duplicate" and kept and kept.group(1) == doc["doc_id"]:
            false[path] = "duplicate of a file of the same package"
    for a, b in sorted(all_edges):
        if b in rejected and b not in false:
            why = f"{rejected[b]['reason']}, imported by {a}"
            (false if rejected[b]["reason"] in ("generated", "empty") else other)[b] = why
    for path in published_build_files(files):
        if path in rejected and rejected[path]["reason"] == "skipped_dir":
            false.setdefault(path, "skipped, but package.json publishes it")
    langs = defaultdict(int)
    for f in doc["files"]:
        lang = LANGUAGE.get(posixpath.splitext(f)[1])
        if lang:
            langs[lang] += 1
    return {
        "languages": ", ".join(sorted(langs, key=lambda k: -langs[k])),
        "archive": len(files),
        "files": len(doc["files"]),
        "rejects": len(rejected),
        "unaccounted": unaccounted,
        "edges": len(edges),
        "pipeline_edges": doc["dependency_edges"],
        "cycle_files": sum(n for n in Counter(comp.values()).values() if n > 1),
        "violations": violations,
        "false": false,
        "other": {p: w for p, w in other.items() if p not in false},
        "generated": {p: r["detail"] for p, r in rejected.items() if r["reason"] == "generated"},
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, help="download folder to keep and reuse")
    ap.add_argument("--pipeline-repo", type=Path, default=REPO, help="checkout to run")
    ap.add_argument("--no-record", action="store_true", help="print, do not append to docs")
    ap.add_argument("--label", default="", help="added to the recorded section's title")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="longctx-deps-"))
    dest = args.cache or tmp
    dest.mkdir(parents=True, exist_ok=True)
    fetched = fetch(dest)
    cmd = [sys.executable, "-m", "pipeline.run", "--runner", "DirectRunner"]
    for _, _, path in fetched:
        cmd += ["--repos", str(path)]
    out = tmp / "out"
    cmd += ["--tokenizer", str(QWEN3), "--seq-len", "65536", "--output", str(out), "--quiet"]
    env = {"PYTHONPATH": str(args.pipeline_repo), "PATH": "/usr/bin:/bin"}
    subprocess.run(cmd, cwd=args.pipeline_repo, check=True, env=env)
    import pyarrow as pa

    docs = pa.ipc.open_stream((out / "documents.arrow").read_bytes()).read_all().to_pylist()
    by_origin = {d["origin"]: d for d in docs}
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    rows, totals, notes = [], defaultdict(int), []
    for registry, label, path in fetched:
        doc = by_origin.get(str(path))
        if doc is None:
            print(f"{label}: no document")
            continue
        r = check_package(doc, archive_files(path), rejects)
        for key in ("archive", "files", "rejects", "edges", "pipeline_edges", "cycle_files"):
            totals[key] += r[key]
        for key in ("unaccounted", "violations", "false"):
            totals[key] += len(r[key])
        counts = [r[k] for k in ("archive", "files", "rejects")] + [len(r["unaccounted"])]
        counts += [r[k] for k in ("edges", "pipeline_edges", "cycle_files")]
        rows.append(
            [label, registry, r["languages"], *counts, len(r["violations"]), len(r["false"])]
        )
        print(rows[-1])
        for a, b in r["violations"]:
            notes.append(f"- {label}: violation, `{a}` imports `{b}`, placed after it")
        for p, why in sorted(r["false"].items()):
            notes.append(f"- {label}: false reject `{p}` ({why})")
        for p, why in sorted(r["other"].items()):
            notes.append(f"- {label}: rejected and imported, by design: `{p}` ({why})")
        for p in r["unaccounted"]:
            notes.append(f"- {label}: `{p}` is neither in the document nor in rejects")
        if r["generated"]:
            markers = sorted({d.split(": ", 1)[-1] for d in r["generated"].values()})
            paths = ", ".join(f"`{p}`" for p in sorted(r["generated"]))
            notes.append(
                f"- {label}: rejected as generated: {paths} (header: {' / '.join(markers)})"
            )
    keys = "archive files rejects unaccounted edges pipeline_edges cycle_files violations false"
    rows.append([f"**{len(rows)} packages**", "", "", *(totals[k] for k in keys.split())])
    header = "package|registry|languages (document files)|archive files|in document|rejects|"
    header += "unaccounted|checker edges|pipeline edges|files on cycles|violations|false rejects"
    body = table(header.split("|"), rows) + "\n\n" + ("\n".join(notes) if notes else "No notes.")
    shutil.rmtree(tmp, ignore_errors=True)  # the pipeline's output (and downloads without --cache)
    if args.no_record:
        print(body)
    else:
        title = f"Dependency order on {len(rows) - 1} registry packages (independent checker)"
        title += f", {args.label}" if args.label else ""
        record(title, " ".join(["python benchmarks/dependency_order.py", *sys.argv[1:]]), body)


if __name__ == "__main__":
    main()
