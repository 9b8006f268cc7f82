"""The CLI as a user runs it, on the real books, real standard-library code and the real
Qwen3 tokenizer; then every invariant of CONTRACTS sections 2-3 is proven on the output."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from schemas.validation import validate_output
from tests.conftest import STDLIB, run_cli
from transforms.dependencies import dependency_edges
from transforms.ordering import strongly_connected
from transforms.reading import ReadLimits, read_book
from transforms.repository import read_repository
from transforms.tokenize import encode_document

PACKAGES = ("json", "email", "asyncio")
pytestmark = pytest.mark.slow


def _run(out: Path, books_dir, qwen3_dir, *extra):
    args = [
        "--runner",
        "DirectRunner",
        "--books",
        books_dir,
        "--tokenizer",
        qwen3_dir,
        "--output",
        out,
        *extra,
    ]
    for pkg in PACKAGES:
        args += ["--repos", STDLIB / pkg]
    proc = run_cli("pipeline.run", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def out16k(tmp_path_factory, books_dir, qwen3_dir):
    out = tmp_path_factory.mktemp("e2e") / "out"
    proc = _run(out, books_dir, qwen3_dir, "--seq-len", "16384")
    assert "Wrote" in proc.stdout
    return out


def _read_arrow(path: Path) -> pa.Table:
    return pa.ipc.open_stream(path.read_bytes()).read_all()


def _segments(out: Path) -> dict[str, list[tuple[int, np.ndarray]]]:
    manifest = json.loads((out / "manifest.json").read_text())
    segs: dict[str, list] = {}
    for shard in manifest["shards"]:
        table = _read_arrow(out / shard["path"])
        for row in table.to_pylist():
            ids = np.array(row["input_ids"], np.int32)
            offs = np.r_[0, np.cumsum(row["seq_lengths"])]
            for i, (d, s) in enumerate(zip(row["doc_ids"], row["doc_starts"], strict=True)):
                segs.setdefault(d, []).append((s, ids[offs[i] : offs[i + 1]]))
    return segs


def _expected_tokens(doc_row, qwen3) -> np.ndarray:
    """Re-read and re-tokenize a document from its origin, outside Beam."""
    if doc_row["kind"] == "book":
        doc = read_book(doc_row["origin"], doc_row["doc_id"], ReadLimits())
    else:
        name = Path(doc_row["origin"]).name
        doc, _ = read_repository(doc_row["origin"], doc_row["doc_id"], name, ReadLimits())
    return encode_document(doc, qwen3)


def test_output_layout_and_manifest(out16k, books_dir):
    assert (out16k / "manifest.json").is_file() and (out16k / "documents.arrow").is_file()
    assert (out16k / "rejects.jsonl").is_file() and (out16k / "report" / "summary.md").is_file()
    assert (out16k / "report" / "doc_lengths.png").stat().st_size > 5000
    assert not list(out16k.glob(".staging*"))
    m = json.loads((out16k / "manifest.json").read_text())
    assert m["seq_len"] == 16384 and m["overlap"] == 0
    assert m["tokenizer"]["vocab_size"] == 151669 and len(m["tokenizer"]["sha256"]) == 64
    n_books = len(list(books_dir.glob("*.txt")))
    assert m["counts"]["documents_by_kind"] == {"book": n_books, "code": len(PACKAGES)}
    for shard in m["shards"]:
        data = (out16k / shard["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
        assert shard["path"].startswith("shards/train-") and shard["path"].endswith(".arrow")
    # packing: no more samples than ceil(tokens / seq_len) + 1% (or + 1)
    bound = -(-m["counts"]["document_tokens"] // 16384)
    assert m["counts"]["samples"] <= max(bound + 1, int(bound * 1.01) + 1)
    assert m["counts"]["tokens"] == m["counts"]["document_tokens"]  # no overlap: no token twice


def test_validator_accepts_the_output(out16k):
    problems = validate_output(str(out16k))
    assert problems.total == 0, list(problems)
    proc = run_cli("pipeline.validate", out16k)
    assert proc.returncode == 0 and "valid" in proc.stdout


def test_every_token_of_every_document_lands_in_exactly_one_sample(out16k, qwen3):
    docs = _read_arrow(out16k / "documents.arrow").to_pylist()
    segs = _segments(out16k)
    assert set(segs) == {d["doc_id"] for d in docs}
    for d in docs:
        expected = _expected_tokens(d, qwen3)
        assert len(expected) == d["n_tokens"], d["doc_id"]
        pieces = sorted(segs[d["doc_id"]], key=lambda p: p[0])
        if d["n_tokens"] <= 16384:
            assert len(pieces) == 1, d["doc_id"]
        rebuilt = np.concatenate([p[1] for p in pieces])
        assert [p[0] for p in pieces] == np.r_[0, np.cumsum([len(p[1]) for p in pieces])][
            :-1
        ].tolist()
        np.testing.assert_array_equal(rebuilt, expected, err_msg=d["doc_id"])


def test_repository_files_come_after_the_files_they_import(out16k):
    """Independent check: re-extract imports from the files as written, in document order."""
    docs = [d for d in _read_arrow(out16k / "documents.arrow").to_pylist() if d["kind"] == "code"]
    assert {d["doc_id"] for d in docs} == {f"code/{p}" for p in PACKAGES}
    total_edges = 0
    for d in docs:
        files = d["files"]
        texts = [(Path(d["origin"]) / f).read_text(encoding="utf-8") for f in files]
        edges, _ = dependency_edges(files, texts, Path(d["origin"]).name)
        comp = strongly_connected(len(files), edges)
        # files are listed in document order, so an edge (a imports b) needs b before a
        violations = [(files[a], files[b]) for a, b in edges if comp[a] != comp[b] and b > a]
        assert violations == [], d["doc_id"]
        assert d["dependency_edges"] == len(edges)
        total_edges += len(edges)
    assert total_edges > 100
    json_doc = next(d for d in docs if d["doc_id"] == "code/json")
    assert json_doc["files"].index("scanner.py") < json_doc["files"].index("decoder.py")
    assert json_doc["files"].index("decoder.py") < json_doc["files"].index("__init__.py")


def test_long_book_windows_start_at_line_starts_and_chapters_are_recorded(out16k, qwen3):
    docs = {d["doc_id"]: d for d in _read_arrow(out16k / "documents.arrow").to_pylist()}
    assert len(docs["book/tolstoy-war-and-peace"]["chapter_starts"]) > 300
    assert docs["book/tolstoy-war-and-peace"]["language"] == "english"
    assert docs["book/goethe-faust-part-one"]["language"] == "german"
    segs = _segments(out16k)
    at_paragraph = total = 0
    for doc_id in ("book/tolstoy-war-and-peace", "book/kjv-bible", "book/melville-moby-dick"):
        expected = _expected_tokens(docs[doc_id], qwen3)
        for start, _ in segs[doc_id]:
            if start == 0:
                continue
            total += 1
            before = qwen3.tokenizer.decode(expected[max(0, start - 2) : start].tolist())
            at_paragraph += before.endswith("\n")
        assert docs[doc_id]["dependency_score"] > 0.005
    assert total > 50 and at_paragraph >= 0.9 * total, (at_paragraph, total)


def test_no_gutenberg_licence_in_any_sample(out16k, qwen3):
    m = json.loads((out16k / "manifest.json").read_text())
    for shard in m["shards"]:
        for ids in _read_arrow(out16k / shard["path"]).column("input_ids").to_pylist():
            text = qwen3.tokenizer.decode(ids)
            assert "PROJECT GUTENBERG EBOOK" not in text and "Project Gutenberg License" not in text
            assert "gutenberg" not in text.lower()


def test_shards_load_with_datasets(out16k):
    import datasets

    files = sorted(str(p) for p in (out16k / "shards").glob("*.arrow"))
    ds = datasets.load_dataset("arrow", data_files=files, split="train")
    m = json.loads((out16k / "manifest.json").read_text())
    assert len(ds) == m["counts"]["samples"]
    assert set(ds.column_names) >= {"input_ids", "seq_lengths", "doc_ids", "doc_starts"}
    ds2 = datasets.Dataset.from_file(files[0])
    assert sum(len(x) for x in ds2["input_ids"]) == m["shards"][0]["tokens"]


def test_overlap_parquet_and_determinism(tmp_path, books_dir, qwen3_dir, out16k):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        _run(
            out,
            books_dir,
            qwen3_dir,
            "--seq-len",
            "16384",
            "--overlap",
            "1000",
            "--format",
            "parquet",
        )
    assert validate_output(str(a)).total == 0
    ma = json.loads((a / "manifest.json").read_text())
    mb = json.loads((b / "manifest.json").read_text())
    assert [s["sha256"] for s in ma["shards"]] == [s["sha256"] for s in mb["shards"]]
    assert (a / "documents.arrow").read_bytes() == (b / "documents.arrow").read_bytes()
    assert ma["shards"][0]["path"].endswith(".parquet")
    # with overlap, windows of a long book share exactly 1000 equal tokens
    segs = _segments_parquet(a)
    pieces = sorted(segs["book/tolstoy-war-and-peace"], key=lambda p: p[0])
    assert len(pieces) > 10
    for (s0, t0), (s1, t1) in zip(pieces, pieces[1:], strict=False):
        assert s1 == s0 + len(t0) - 1000
        np.testing.assert_array_equal(t0[-1000:], t1[:1000])
    # the documents are the same as without overlap; only their segment counts differ
    da, d0 = _read_arrow(a / "documents.arrow"), _read_arrow(out16k / "documents.arrow")
    assert da.drop(["n_segments"]).equals(d0.drop(["n_segments"]))
    assert sum(da.column("n_segments").to_pylist()) > sum(d0.column("n_segments").to_pylist())


def _segments_parquet(out: Path):
    import pyarrow.parquet as pq

    segs: dict[str, list] = {}
    for path in sorted((out / "shards").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            ids = np.array(row["input_ids"], np.int32)
            offs = np.r_[0, np.cumsum(row["seq_lengths"])]
            for i, (d, s) in enumerate(zip(row["doc_ids"], row["doc_starts"], strict=True)):
                segs.setdefault(d, []).append((s, ids[offs[i] : offs[i + 1]]))
    return segs
