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


def test_entries_read_without_np_load_equal_np_loads_and_others_fall_back(
    tmp_path, books_dir, qwen3
):
    """The cache's entries are read by a parser of the plain arrays ``encode`` writes (np.load's
    header parsing was most of a short record's load). Every array of real entries (a long book
    with chapters and windows, a short record, a score of None, NaN window scores) comes back
    as np.load gives it: dtype, shape, values, writable. What ``encode`` never writes (a
    compressed archive, a 2-D or big-endian array) is read by np.load, the same as before."""
    import io

    from pipeline import entries
    from pipeline.config import BuildConfig
    from transforms.documents import TextDocument
    from transforms.samples.entries import tokenize_entry

    config = BuildConfig(seq_len=8192, output=str(tmp_path / "out"))
    text = (books_dir / "austen-pride-and-prejudice.txt").read_text(encoding="utf-8")
    made = [
        tokenize_entry(
            TextDocument("book/a", "book", "a.txt", [text], chapters=[0, 9000]), qwen3, config
        ),
        tokenize_entry(TextDocument("docs/r/1", "book", "r.jsonl", [text[:700]]), qwen3, config),
    ]
    made.append(dict(made[1], score=None))
    assert len(made[0]["starts"]) > 10 and np.isnan(made[0]["window_scores"]).any()
    for entry in made:
        data = entries.encode(entry)
        fast = entries._plain_arrays(data)
        assert fast is not None
        slow = np.load(io.BytesIO(data), allow_pickle=False)
        assert sorted(fast) == sorted(slow.files)
        for name in slow.files:
            got, want = fast[name], slow[name]
            assert got.dtype == want.dtype and got.shape == want.shape, name
            np.testing.assert_array_equal(got, want, err_msg=name)  # NaN where NaN
            assert got.flags.writeable, name
        back = entries.decode(data)
        assert back["score"] == entry["score"]
        np.testing.assert_array_equal(back["tokens"], entry["tokens"])
    odd = {
        "compressed": lambda buf: np.savez_compressed(
            buf, score=np.float64(1.5), tokens=np.arange(5)
        ),
        "2-D": lambda buf: np.savez(buf, score=np.float64(1.5), tokens=np.arange(6).reshape(2, 3)),
        "big-endian": lambda buf: np.savez(
            buf, score=np.float64(1.5), tokens=np.arange(5, dtype=">i4")
        ),
    }
    for name, write in odd.items():
        buf = io.BytesIO()
        write(buf)
        assert entries._plain_arrays(buf.getvalue()) is None, name
        back = entries.decode(buf.getvalue())
        assert back["score"] == 1.5 and back["tokens"].sum() == 10 + 5 * (name == "2-D"), name
