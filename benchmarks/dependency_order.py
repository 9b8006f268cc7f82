"""Dependency order on real code fetched from package registries (needs network to them).

    python benchmarks/dependency_order.py

Fetches JavaScript/TypeScript packages with ``npm pack`` and Rust crates inside PyPI source
distributions (``tokenizers``), runs the pipeline on them as ``.tar.gz`` repositories, then
re-extracts every file's imports from the output's own file list and counts order violations
(an imported file placed after its importer, outside an import cycle). Prints and records a
table per repository: files, edges, files on cycles, violations.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import QWEN3, REPO, record, table  # noqa: E402

NPM = ("axios@1.7.7", "lodash-es@4.17.21", "zod@3.23.8", "preact@10.24.3")
PYPI_SDISTS = ("tokenizers",)  # Rust sources in the sdist


def fetch(dest: Path) -> list[Path]:
    out = []
    for spec in NPM:
        proc = subprocess.run(
            ["npm", "pack", spec, "--silent"], cwd=dest, capture_output=True, text=True
        )
        if proc.returncode == 0:
            out.append(dest / proc.stdout.strip().splitlines()[-1])
        else:
            print(f"skipped {spec}: {proc.stderr.strip()[:200]}")
    for name in PYPI_SDISTS:
        req = urllib.request.Request(
            f"https://pypi.org/simple/{name}/",
            headers={"Accept": "application/vnd.pypi.simple.v1+json"},
        )
        files = json.load(urllib.request.urlopen(req, timeout=60))["files"]
        sdist = [f for f in files if f["filename"].endswith(".tar.gz")][-1]
        path = dest / sdist["filename"]
        urllib.request.urlretrieve(sdist["url"], path)
        out.append(path)
    return out


def main() -> None:
    from transforms.code.dependencies import dependency_edges
    from transforms.code.ordering import strongly_connected

    tmp = Path(tempfile.mkdtemp(prefix="longctx-deps-"))
    archives = fetch(tmp)
    args = [sys.executable, "-m", "pipeline.run", "--runner", "DirectRunner"]
    for a in archives:
        args += ["--repos", str(a)]
    out = tmp / "out"
    args += ["--tokenizer", str(QWEN3), "--seq-len", "65536", "--output", str(out), "--quiet"]
    subprocess.run(args, cwd=REPO, check=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin"})
    import pyarrow as pa

    docs = pa.ipc.open_stream((out / "documents.arrow").read_bytes()).read_all().to_pylist()
    rows = []
    for d in docs:
        archive = Path(d["origin"])
        with tarfile.open(archive) as tf:
            members = {m.name: m for m in tf.getmembers() if m.isfile()}
            top = next(iter(members)).split("/", 1)[0] + "/"
            texts = [
                tf.extractfile(members[top + f]).read().decode("utf-8", "replace")
                for f in d["files"]
            ]
        edges, _ = dependency_edges(d["files"], texts, "")
        comp = strongly_connected(len(d["files"]), edges)
        violations = sum(1 for a, b in edges if comp[a] != comp[b] and b > a)
        langs = sorted({f.rsplit(".", 1)[-1] for f in d["files"] if "." in f})[:6]
        rows.append(
            [
                d["doc_id"],
                len(d["files"]),
                ", ".join(langs),
                len(edges),
                d["cycle_files"],
                violations,
            ]
        )
        print(rows[-1])
    record(
        "Dependency order on registry packages",
        "python benchmarks/dependency_order.py",
        table(
            ["repository", "files", "file types", "import edges", "files on cycles", "violations"],
            rows,
        ),
    )


if __name__ == "__main__":
    main()
