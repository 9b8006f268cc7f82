"""Every write of the pipeline goes through apache_beam.io.filesystems: an output on a
filesystem scheme registered with Beam (here a counting wrapper around local disk, standing in
for gs:// or s3://) receives the whole output, and nothing is written around it."""

from __future__ import annotations

import json
import os

import pytest
from apache_beam.io.localfilesystem import LocalFileSystem

from tests.conftest import STDLIB

CALLS: list[tuple[str, str]] = []
ROOT = {"dir": ""}


def _local(path: str) -> str:
    if not path.startswith("counting://"):  # LocalFileSystem calling itself with a local path
        assert path.startswith(ROOT["dir"]), path
        return path
    return os.path.join(ROOT["dir"], path[len("counting://") :])


class CountingFileSystem(LocalFileSystem):
    """``counting://x`` is ``ROOT/x`` on local disk; every call is recorded."""

    @classmethod
    def scheme(cls):
        return "counting"

    def join(self, base, *paths):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path):
        head, _, tail = path.rpartition("/")
        return head, tail

    def mkdirs(self, path):
        CALLS.append(("mkdirs", path))
        return super().mkdirs(_local(path))

    def create(self, path, *args, **kwargs):
        CALLS.append(("create", path))
        return super().create(_local(path), *args, **kwargs)

    def open(self, path, *args, **kwargs):
        CALLS.append(("open", path))
        return super().open(_local(path), *args, **kwargs)

    def exists(self, path):
        CALLS.append(("exists", path))
        return super().exists(_local(path))

    def rename(self, sources, destinations):
        CALLS.extend(("rename", f"{s} -> {d}") for s, d in zip(sources, destinations, strict=True))
        return super().rename([_local(s) for s in sources], [_local(d) for d in destinations])

    def delete(self, paths):
        CALLS.extend(("delete", p) for p in paths)
        return super().delete([_local(p) for p in paths])

    def match(self, patterns, limits=None):
        CALLS.extend(("match", p) for p in patterns)
        results = super().match([_local(p) for p in patterns], limits)
        if not all(p.startswith("counting://") for p in patterns):
            return results  # LocalFileSystem.delete matching its own local paths
        for r in results:
            for m in r.metadata_list:
                m.path = "counting://" + os.path.relpath(m.path, ROOT["dir"])
        return results


@pytest.mark.slow
def test_whole_output_is_written_through_beam_filesystems(tmp_path, books_dir, qwen3_dir):
    from pipeline.run import run

    ROOT["dir"] = str(tmp_path / "disk")
    os.makedirs(ROOT["dir"])
    CALLS.clear()
    before = set(os.listdir(tmp_path))
    rc = run(
        [
            "--runner",
            "DirectRunner",
            "--books",
            str(books_dir / "kafka-metamorphosis.txt"),
            "--repos",
            str(STDLIB / "json"),
            "--tokenizer",
            str(qwen3_dir),
            "--seq-len",
            "16384",
            "--incremental",
            "--output",
            "counting://out",
            "--quiet",
        ]
    )
    assert rc == 0
    assert set(os.listdir(tmp_path)) == before  # nothing written beside the filesystem
    out = tmp_path / "disk" / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    # Where each file written through the filesystem ended up: created, then maybe renamed
    # (a whole folder at a time: .staging/shards -> shards).
    final = set()
    for kind, p in CALLS:
        if kind == "create":
            final.add(p)
        elif kind == "rename":
            src, dst = p.split(" -> ")
            for f in [f for f in final if f == src or f.startswith(src + "/")]:
                final.discard(f)
                final.add(dst + f[len(src) :])
        elif kind == "delete":
            final -= {f for f in final if f == p or f.startswith(p + "/")}
    assert "counting://out/manifest.json" in final
    for shard in manifest["shards"]:
        assert f"counting://out/{shard['path']}" in final
    for name in ("documents.arrow", "rejects.jsonl", "report/summary.md", "report/report.html"):
        assert f"counting://out/{name}" in final, name
    # every file on disk got there through the filesystem
    on_disk = {
        "counting://" + os.path.relpath(os.path.join(d, f), ROOT["dir"])
        for d, _, files in os.walk(ROOT["dir"])
        for f in files
    }
    assert on_disk == final, on_disk ^ final
    assert any(p.startswith("counting://out/.cache/tokens/") for p in on_disk)
    # a finished output there needs --overwrite, checked through the filesystem too
    rc = run(["--runner", "DirectRunner", "--output", "counting://out", "--quiet"])
    assert rc == 2


@pytest.mark.slow
def test_inputs_are_read_through_beam_filesystems(tmp_path, books_dir, qwen3_dir):
    """Books, a repository prefix, a --repos-root prefix and a records file, all on a
    non-local scheme, give the same samples as the same inputs on local disk."""
    import shutil

    import pyarrow as pa

    from pipeline.run import run

    ROOT["dir"] = str(tmp_path / "disk")
    disk = tmp_path / "disk"
    (disk / "in" / "books").mkdir(parents=True)
    for b in ("kafka-metamorphosis.txt", "gilman-the-yellow-wallpaper.txt"):
        shutil.copy(books_dir / b, disk / "in" / "books" / b)
    shutil.copytree(
        STDLIB / "json",
        disk / "in" / "repos" / "json",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copytree(
        STDLIB / "http", disk / "in" / "root" / "http", ignore=shutil.ignore_patterns("__pycache__")
    )
    (disk / "in" / "docs.jsonl").write_text(
        json.dumps({"id": "a", "text": "A short record about Beam filesystems.\n", "kind": "book"})
        + "\n"
    )

    def args(prefix: str, out: str) -> list[str]:
        return [
            "--runner",
            "DirectRunner",
            "--books",
            f"{prefix}in/books",
            "--repos",
            f"{prefix}in/repos/json",
            "--repos-root",
            f"{prefix}in/root",
            "--documents",
            f"{prefix}in/docs.jsonl",
            "--tokenizer",
            str(qwen3_dir),
            "--seq-len",
            "16384",
            "--output",
            out,
            "--quiet",
        ]

    CALLS.clear()
    assert run(args("counting://", "counting://out")) == 0
    opened = {p for kind, p in CALLS if kind == "open"}
    assert "counting://in/books/kafka-metamorphosis.txt" in opened
    assert "counting://in/repos/json/decoder.py" in opened
    assert "counting://in/root/http/client.py" in opened
    assert "counting://in/docs.jsonl" in opened
    assert run(args(f"{disk}/", str(tmp_path / "local"))) == 0

    def samples(out):
        m = json.loads((out / "manifest.json").read_text())
        tables = [
            pa.ipc.open_stream((out / s["path"]).read_bytes()).read_all() for s in m["shards"]
        ]
        return [t.select(["input_ids", "seq_lengths", "doc_ids", "doc_starts"]) for t in tables]

    remote_docs = pa.ipc.open_stream((disk / "out" / "documents.arrow").read_bytes()).read_all()
    local_docs = pa.ipc.open_stream(
        (tmp_path / "local" / "documents.arrow").read_bytes()
    ).read_all()
    assert remote_docs.column("doc_id").to_pylist() == local_docs.column("doc_id").to_pylist()
    assert remote_docs.column("n_tokens").equals(local_docs.column("n_tokens"))
    assert remote_docs.column("files").equals(local_docs.column("files"))
    assert all(
        a.equals(b) for a, b in zip(samples(disk / "out"), samples(tmp_path / "local"), strict=True)
    )


def test_remote_outputs_are_guarded_like_local_ones(tmp_path):
    """Review: on gs://-style paths (here counting://) a run replaced a user's report/paper.md
    and read an earlier output inside --books back as books. Both guards now list through
    Beam's filesystems: the user's files are foreign, a marked folder and this run's own
    --output are skipped."""
    from pipeline.discover import discover
    from pipeline.output import foreign_files
    from schemas.layout import MARKER

    ROOT["dir"] = str(tmp_path / "disk")
    proj = tmp_path / "disk" / "proj"
    (proj / "report").mkdir(parents=True)
    (proj / "report" / "paper.md").write_text("mine\n")
    assert foreign_files("counting://proj") == ["report/"]
    (proj / MARKER).write_text("")
    assert foreign_files("counting://proj") == ["report/paper.md"]
    books = tmp_path / "disk" / "books"
    (books / "out1" / "report").mkdir(parents=True)
    (books / "a.txt").write_text("A book.\n")
    (books / "out1" / MARKER).write_text("")
    (books / "out1" / "report" / "summary.md").write_text("# longctx report\n")
    (books / "out2").mkdir()
    (books / "out2" / "notes.txt").write_text("not a book of this run\n")
    sources, rejects = discover(books=["counting://books"], output="counting://books/out2")
    assert [s.path for s in sources] == ["counting://books/a.txt"]
    assert sorted((r.path, r.reason) for r in rejects) == [
        ("counting://books/out1", "skipped_dir"),
        ("counting://books/out2", "skipped_dir"),
    ]
