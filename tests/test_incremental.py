"""--incremental: a scheduled rerun reuses unchanged documents and equals a full run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.conftest import STDLIB, run_cli

pytestmark = pytest.mark.slow


def _run(out, books, repos, qwen3_dir, *extra):
    args = ["--runner", "DirectRunner", "--books", books, "--tokenizer", qwen3_dir]
    for r in repos:
        args += ["--repos", r]
    proc = run_cli("pipeline.run", *args, "--seq-len", "16384", "--output", out, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "manifest.json").read_text())


def _same_output(a, b):
    ma, mb = (json.loads((x / "manifest.json").read_text()) for x in (a, b))
    assert [s["sha256"] for s in ma["shards"]] == [s["sha256"] for s in mb["shards"]]
    assert (a / "documents.arrow").read_bytes() == (b / "documents.arrow").read_bytes()
    assert (a / "rejects.jsonl").read_bytes() == (b / "rejects.jsonl").read_bytes()


def test_incremental_rerun_reuses_unchanged_documents_and_equals_a_full_run(
    tmp_path, books_dir, qwen3_dir
):
    books = tmp_path / "books"
    books.mkdir()
    for b in (
        "kafka-metamorphosis.txt",
        "gilman-the-yellow-wallpaper.txt",
        "wells-the-time-machine.txt",
    ):
        shutil.copy(books_dir / b, books / b)
    repos = [STDLIB / "json", STDLIB / "http"]
    out = tmp_path / "inc"
    first = _run(out, books, repos, qwen3_dir, "--incremental")
    assert first["incremental"] == {"documents_reused": 0, "documents_tokenized": 5}
    # nothing changed: everything is reused
    again = _run(out, books, repos, qwen3_dir, "--incremental")
    assert again["incremental"] == {"documents_reused": 5, "documents_tokenized": 0}
    # one book edited, one book added, one repository added
    wall = books / "gilman-the-yellow-wallpaper.txt"
    wall.write_text(wall.read_text().replace("John", "Johnny"))
    shutil.copy(books_dir / "shelley-frankenstein.txt", books / "shelley-frankenstein.txt")
    repos.append(STDLIB / "email")
    third = _run(out, books, repos, qwen3_dir, "--incremental")
    assert third["incremental"] == {"documents_reused": 4, "documents_tokenized": 3}
    full = tmp_path / "full"
    _run(full, books, repos, qwen3_dir)
    _same_output(out, full)
    # the cache holds exactly the entries of the last run
    assert len(list((out / ".cache" / "tokens").glob("*.npz"))) == 7
    assert not list((out / ".cache" / "tokens").glob("*.tmp-*"))


@pytest.fixture(scope="module")
def damaged_rerun(tmp_path_factory, books_dir, qwen3_dir):
    """Three documents run with --incremental; one of the three cache entries is overwritten
    with garbage; the rerun's output, beside a full run of the same inputs."""
    root = tmp_path_factory.mktemp("damaged")
    books = root / "books"
    books.mkdir()
    for b in ("kafka-metamorphosis.txt", "gilman-the-yellow-wallpaper.txt"):
        shutil.copy(books_dir / b, books / b)
    repos = [STDLIB / "json"]
    out = root / "inc"
    first = _run(out, books, repos, qwen3_dir, "--incremental")
    assert first["incremental"] == {"documents_reused": 0, "documents_tokenized": 3}
    entries = sorted((out / ".cache" / "tokens").glob("*.npz"))
    assert len(entries) == 3
    damaged = entries[0]
    damaged.write_bytes(b"garbage")
    rerun = _run(out, books, repos, qwen3_dir, "--incremental")
    full = root / "full"
    _run(full, books, repos, qwen3_dir)
    return out, full, damaged, rerun


def test_damaged_cache_entry_is_a_miss_and_the_rerun_equals_a_full_run(damaged_rerun):
    out, full, damaged, rerun = damaged_rerun
    _same_output(out, full)
    # the damaged entry was tokenized again and written back whole; the other two were kept
    assert sorted((out / ".cache" / "tokens").glob("*.npz"))[0] == damaged
    assert len(list((out / ".cache" / "tokens").glob("*.npz"))) == 3
    assert damaged.read_bytes() != b"garbage"
    assert np.load(damaged, allow_pickle=False)["tokens"].dtype == np.int32
    assert sum(rerun["incremental"].values()) == 3


def test_damaged_cache_entry_counts_as_tokenized_not_reused(damaged_rerun):
    """Two documents with intact entries are reused; the one whose entry was damaged is
    tokenized again and must be counted so."""
    _, _, _, rerun = damaged_rerun
    assert rerun["incremental"] == {"documents_reused": 2, "documents_tokenized": 1}
