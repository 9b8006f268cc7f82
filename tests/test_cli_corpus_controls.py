"""Corpus controls from the command line: --mix, --min-dependency-score, dedup, archives,
related packing; each checked on real books and real standard-library code."""

from __future__ import annotations

import json
import shutil
import tarfile

import pyarrow as pa
import pytest

from schemas.validation import validate_output
from tests.conftest import BOOKS as SHARED_BOOKS
from tests.conftest import STDLIB, run_cli

pytestmark = pytest.mark.slow
BOOKS = ("austen-pride-and-prejudice", "melville-moby-dick", "shelley-frankenstein")


def _run(out, qwen3_dir, inputs, *extra):
    proc = run_cli(
        "pipeline.run",
        "--runner",
        "DirectRunner",
        "--tokenizer",
        qwen3_dir,
        "--seq-len",
        "32768",
        "--output",
        out,
        *inputs,
        *extra,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert validate_output(str(out)).total == 0
    return json.loads((out / "manifest.json").read_text())


def _rejects(out):
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def _docs(out):
    return pa.ipc.open_stream((out / "documents.arrow").read_bytes()).read_all().to_pylist()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, books_dir):
    """Three books, one of them twice under another name; json as a folder and a .tar.gz."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "books").mkdir()
    for b in BOOKS:
        shutil.copy(books_dir / f"{b}.txt", root / "books" / f"{b}.txt")
    shutil.copy(books_dir / f"{BOOKS[0]}.txt", root / "books" / "copy-of-austen.txt")
    with tarfile.open(root / "json-copy.tar.gz", "w:gz") as tf:
        tf.add(
            STDLIB / "json",
            arcname="json-copy",
            filter=lambda t: None if "__pycache__" in t.name else t,
        )
    return root


def test_duplicates_are_listed_with_the_kept_copy_and_archives_are_read(
    tmp_path, corpus, qwen3_dir
):
    inputs = ["--books", corpus / "books", "--repos", STDLIB / "json"]
    inputs += ["--repos", corpus / "json-copy.tar.gz", "--repos", STDLIB / "http"]
    m = _run(tmp_path / "out", qwen3_dir, inputs)
    dups = [r for r in _rejects(tmp_path / "out") if r["reason"] == "duplicate"]
    by_path = {r["path"]: r["detail"] for r in dups}
    austen_copy = str(corpus / "books" / "copy-of-austen.txt")
    assert by_path[austen_copy].startswith("exact duplicate of book/austen-pride-and-prejudice")
    # every file of the archive duplicates the folder's copy, which sorts first (code/json)
    archive_dups = [p for p in by_path if p.startswith(str(corpus / "json-copy.tar.gz"))]
    assert len(archive_dups) == 5
    assert all("code/json!" in by_path[p] for p in archive_dups)
    doc_ids = {d["doc_id"] for d in _docs(tmp_path / "out")}
    assert "book/copy-of-austen" not in doc_ids and "code/json-copy" not in doc_ids
    assert {"code/json", "code/http", "book/melville-moby-dick"} <= doc_ids
    assert m["counts"]["rejects_by_reason"]["duplicate"] == 6
    # --no-dedup keeps both copies
    m2 = _run(tmp_path / "all", qwen3_dir, inputs, "--no-dedup")
    assert m2["counts"]["documents"] == m["counts"]["documents"] + 2


def test_mix_selects_token_shares_deterministically(tmp_path, corpus, qwen3_dir, monkeypatch):
    inputs = ["--books", corpus / "books", "--repos-root", STDLIB / "email", "--no-dedup"]
    inputs += [
        "--repos",
        STDLIB / "json",
        "--repos",
        STDLIB / "asyncio",
        "--repos",
        STDLIB / "http",
    ]
    a = _run(tmp_path / "a", qwen3_dir, inputs, "--mix", "book=1,code=1", "--seed", "7")
    # b in a new interpreter: its own seed for hash() (tests/forkserver.py)
    monkeypatch.setenv("LONGCTX_TEST_FORKSERVER", "0")
    b = _run(tmp_path / "b", qwen3_dir, inputs, "--mix", "book=1,code=1", "--seed", "7")
    mix = a["mixture"]
    assert mix["requested"] == {"book": 0.5, "code": 0.5}
    # whole documents are kept or left out, so the share is off by at most one document
    base = _run(tmp_path / "all", qwen3_dir, inputs)
    biggest = max(d["n_tokens"] for d in _docs(tmp_path / "all"))
    assert abs(mix["achieved"]["book"] - 0.5) <= biggest / a["counts"]["document_tokens"]
    assert base["counts"]["document_tokens"] == sum(mix["available_tokens"].values())
    assert mix["documents_left_out"] > 0
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    left_out = [r for r in _rejects(tmp_path / "a") if r["reason"] == "mixture"]
    assert len(left_out) == mix["documents_left_out"]
    kinds = {d["kind"] for d in _docs(tmp_path / "a")}
    assert kinds == {"book", "code"}
    assert a["counts"]["document_tokens"] == sum(mix["selected_tokens"].values())


def test_min_dependency_score_leaves_out_low_scoring_long_documents(tmp_path, corpus, qwen3_dir):
    inputs = ["--books", corpus / "books", "--no-dedup"]
    base = _run(tmp_path / "base", qwen3_dir, inputs)
    scores = {d["doc_id"]: d["dependency_score"] for d in _docs(tmp_path / "base")}
    scored = sorted(s for s in scores.values() if s is not None)
    assert len(scored) >= 3
    cut = (scored[0] + scored[-1]) / 2
    m = _run(tmp_path / "cut", qwen3_dir, inputs, "--min-dependency-score", str(cut))
    kept = {d["doc_id"] for d in _docs(tmp_path / "cut")}
    assert kept == {d for d, s in scores.items() if s is None or s >= cut}
    low = [r for r in _rejects(tmp_path / "cut") if r["reason"] == "low_dependency_score"]
    assert len(low) == len(scores) - len(kept) > 0
    assert m["counts"]["documents"] < base["counts"]["documents"]


def test_related_packing_keeps_kinds_apart(tmp_path, corpus, qwen3_dir):
    inputs = ["--books", corpus / "books", "--repos-root", STDLIB / "email", "--no-dedup"]
    m = _run(tmp_path / "out", qwen3_dir, inputs, "--seq-len", "16384")
    packing = m["packing"]
    assert packing["samples_one_kind_language"] >= 0.9
    assert m["counts"]["samples"] <= max(
        m["lower_bound_samples"] + 1, 1.01 * m["lower_bound_samples"]
    )


def test_fill_gaps_packs_to_the_lower_bound_without_cutting_what_fits(
    tmp_path, books_dir, qwen3_dir
):
    """All 14 books at 64K with --fill-gaps: the emptiest samples of split books are poured into
    the free room of the others (the validator re-checks coverage and that no document that fits
    was cut; tests/test_packing.py has a corpus where plain packing is far above the bound)."""
    inputs = ["--books", books_dir, "--seq-len", "65536"]
    plain = _run(tmp_path / "plain", qwen3_dir, inputs)
    filled = _run(tmp_path / "filled", qwen3_dir, inputs, "--fill-gaps")
    bound = filled["lower_bound_samples"]
    assert plain["counts"]["tokens"] == filled["counts"]["tokens"]
    assert filled["counts"]["samples"] <= min(
        plain["counts"]["samples"], max(bound + 1, 1.01 * bound)
    )
    assert "--fill-gaps" in filled["packing"]["rule"]
    fits = {
        d["doc_id"]: d["n_segments"] for d in _docs(tmp_path / "filled") if d["n_tokens"] <= 65536
    }
    assert all(n == 1 for n in fits.values())


def test_same_repository_named_twice_is_read_once(tmp_path):
    """--repos X and --repos-root PARENT(X) name one repository: one document, one reject."""
    root = tmp_path / "repos"
    repo = root / "tool"
    repo.mkdir(parents=True)
    (repo / "main.py").write_text("import util\n\nprint(util.VALUE)\n")
    (repo / "util.py").write_text("VALUE = 42\n")
    out = tmp_path / "out"
    proc = run_cli(
        "pipeline.run",
        "--runner",
        "DirectRunner",
        "--repos",
        repo,
        "--repos-root",
        root,
        "--seq-len",
        "4096",
        "--output",
        out,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["documents"] == 1
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejects] == ["duplicate_input"]


def test_min_dependency_score_per_kind_filters_only_the_kind_named(tmp_path, qwen3_dir):
    """Code scores ~0.1, novels ~0.01-0.03: one number for both would drop the novels."""
    inputs = [
        "--books",
        SHARED_BOOKS / "shelley-frankenstein.txt",
        "--repos",
        STDLIB / "asyncio",
        "--min-dependency-score",
        "code=1.0",
    ]
    _run(tmp_path / "out", qwen3_dir, inputs)
    kinds = {d["kind"] for d in _docs(tmp_path / "out")}
    assert kinds == {"book"}  # asyncio (scored, < 1.0) left out; the book's kind is not named
    low = [r for r in _rejects(tmp_path / "out") if r["reason"] == "low_dependency_score"]
    assert len(low) == 1 and low[0]["detail"].endswith("< 1.0 (code)")


def test_caches_in_a_repos_root_are_one_quiet_line(tmp_path):
    root = tmp_path / "repos"
    (root / "tool").mkdir(parents=True)
    (root / "tool" / "main.py").write_text("print('hi')\n")
    cache = root / "__pycache__"
    cache.mkdir()
    for i in range(5):
        (cache / f"m{i}.cpython-311.pyc").write_bytes(b"\x00\x01" * 100)
    out = tmp_path / "out"
    proc = run_cli(
        "pipeline.run",
        "--runner",
        "DirectRunner",
        "--repos-root",
        root,
        "--seq-len",
        "4096",
        "--output",
        out,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rejects = _rejects(out)
    assert [(r["reason"], r["detail"]) for r in rejects] == [
        ("skipped_dir", "1 folders that are no repositories: __pycache__ (bytecode cache)")
    ]
