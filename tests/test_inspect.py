"""pipeline.inspect on a real output: one shared book and one standard-library package at
--seq-len 4096, tokenized with the bundled Qwen3 tokenizer (the manifest's ``bundled:qwen3``).

Alice (37,069 tokens) is cut into 10 windows and the json package (11,437 tokens, 5 files) into
3; the last windows of the two share a sample. No shared book fits in 4,096 tokens, so a
document's text is checked by joining its windows in doc_start order: the book must give
exactly ``read_book``'s text and the end-of-text token, the package its files as on disk.
"""

from __future__ import annotations

import json
import re
import tomllib

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import BOOKS, REPO, STDLIB, run_cli

pytestmark = pytest.mark.slow
BOOK = "carroll-alices-adventures-in-wonderland.txt"
BOOK_ID = "book/carroll-alices-adventures-in-wonderland"
EOT, FILE_SEP, REPO_NAME = "<|endoftext|>", "<|file_sep|>", "<|repo_name|>"
SEGMENT = re.compile(r"^======== segment (\d+) of (\d+) \| sample tokens (\d+)\.\.(\d+) \| (\S+)$")
INFO = re.compile(r"^ {9}(document tokens |\w+, origin |files: )")
WINDOW = re.compile(r"^ {9}document tokens (\d+)\.\.(\d+) of (\d+): (.*)$")


def _run(out, *extra):
    args = ["--runner", "DirectRunner", "--books", BOOKS / BOOK, "--seq-len", "4096"]
    proc = run_cli("pipeline.run", *args, "--output", out, "--quiet", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("inspect") / "out", "--repos", STDLIB / "json")


def _rows(out) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    rows = []
    for entry in manifest["shards"]:
        rows += pa.ipc.open_stream((out / entry["path"]).read_bytes()).read_all().to_pylist()
    return rows


def _documents(out) -> dict[str, dict]:
    table = pa.ipc.open_stream((out / "documents.arrow").read_bytes()).read_all()
    return {d["doc_id"]: d for d in table.to_pylist()}


def _book_text() -> str:
    """The book after the pipeline's stripping, re-read with the pipeline's reader."""
    from transforms.inputs.reading import ReadSettings, read_book

    return read_book(str(BOOKS / BOOK), BOOK_ID, ReadSettings()).texts[0]


def _expected_texts(docs: dict) -> dict[str, str]:
    """Each document's text, built from independent reads: the Qwen2.5-Coder repository
    format over the files as they are on disk, in documents.arrow's order."""
    files = docs["code/json"]["files"]
    assert sorted(files) == sorted(p.name for p in (STDLIB / "json").glob("*.py"))
    code = f"{REPO_NAME}json\n" + "".join(
        f"{FILE_SEP}{name}\n{(STDLIB / 'json' / name).read_text('utf-8')}" for name in files
    )
    return {BOOK_ID: _book_text() + EOT, "code/json": code + EOT}


def _segments(row: dict):
    """(doc_id, doc_start, length, sample offset) of each segment of a shard row."""
    at = np.cumsum([0, *row["seq_lengths"]]).tolist()
    return list(zip(row["doc_ids"], row["doc_starts"], row["seq_lengths"], at, strict=False))


def test_windows_decode_to_the_documents_and_boundaries_match_the_shards(out):
    from pipeline.inspect import open_output, sample_view

    rows, docs = _rows(out), _documents(out)
    output = open_output(str(out))
    assert output.tok.name == "bundled:qwen3"  # loaded by load_tokenizer from the manifest
    windows: dict[str, list[tuple[int, str]]] = {d: [] for d in docs}
    for index, row in enumerate(rows):
        view = sample_view(output, index)
        assert (view.n_tokens, view.count) == (len(row["input_ids"]), len(rows))
        assert [(s.doc_id, s.doc_start, s.length, s.sample_start) for s in view.segments] == (
            _segments(row)
        )
        for seg in view.segments:
            assert (seg.doc_tokens, seg.windows) == (
                docs[seg.doc_id]["n_tokens"],
                docs[seg.doc_id]["n_segments"],
            )
            windows[seg.doc_id].append((seg.doc_start, seg.text))
    assert {d: len(w) for d, w in windows.items()} == {BOOK_ID: 10, "code/json": 3}
    joined = {d: "".join(text for _, text in sorted(w)) for d, w in windows.items()}
    assert joined == _expected_texts(docs)
    assert sum(len(r["doc_ids"]) == 2 for r in rows) == 1  # the two documents' ends


def _spanned_files(rows, docs, doc_start: int, length: int) -> list[str]:
    """The json files a window spans, found from the <|file_sep|> tokens of the whole
    document put back together (not from chapter_starts, which the inspector reads)."""
    from transforms.samples.tokenize import load_tokenizer

    parts = [
        (s, row["input_ids"][at : at + n])
        for row in rows
        for d, s, n, at in _segments(row)
        if d == "code/json"
    ]
    tokens = np.concatenate([np.asarray(t) for _, t in sorted(parts)])
    seps = np.flatnonzero(tokens == load_tokenizer(None).file_sep_id)
    files = docs["code/json"]["files"]
    assert len(seps) == len(files)
    first = max(int(np.searchsorted(seps, doc_start, side="right")) - 1, 0)
    last = int(np.searchsorted(seps, doc_start + length, side="left")) - 1
    return files[first : last + 1]


def _printed_segments(lines: list[str]) -> list[dict]:
    """The segments of the command's output: header fields, marks and text lines."""
    segs, cur = [], None
    for line in lines[2:]:
        head = SEGMENT.match(line)
        if head:
            cur = {"head": head, "info": [], "marks": [], "text": []}
            segs.append(cur)
        elif line.startswith("======== end of segment"):
            cur = None
        elif cur is not None and not cur["text"] and not cur["marks"] and INFO.match(line):
            cur["info"].append(line)
        elif cur is not None and line.startswith("-------- "):
            cur["marks"].append(line)
        elif cur is not None:
            cur["text"].append(line)
    return segs


def test_cli_prints_boundaries_files_provenance_and_every_character(out):
    """The shared sample (json's end, Alice's end) and json's middle window, as a user runs it."""
    from transforms.samples.tokenize import load_tokenizer

    rows, docs, tok = _rows(out), _documents(out), load_tokenizer(None)
    n_json = docs["code/json"]["n_tokens"]
    shared = next(i for i, r in enumerate(rows) if len(r["doc_ids"]) == 2)
    middle = next(
        i
        for i, r in enumerate(rows)
        if r["doc_ids"] == ["code/json"] and 0 < r["doc_starts"][0] < n_json - r["seq_lengths"][0]
    )
    seen = set()
    for index in (shared, middle):
        proc = run_cli("pipeline.inspect", out, "--sample", index, "--max-chars", "0")
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0] == (
            f"{out}: train sample {index} of {len(rows)} "
            f"(shards/train-00000-of-00001.arrow, row {index})"
        )
        assert str(STDLIB) not in proc.stdout and str(BOOKS) not in proc.stdout
        printed = _printed_segments(lines)
        assert len(printed) == len(rows[index]["doc_ids"])
        for seg, (d, s, n, at) in zip(printed, _segments(rows[index]), strict=True):
            head, window = seg["head"], WINDOW.match(seg["info"][0])
            assert (int(head[3]), int(head[4]), head[5]) == (at, at + n, d)  # seq_lengths
            assert (int(window[1]), int(window[2]), int(window[3])) == (
                s,
                s + n,
                docs[d]["n_tokens"],
            )
            ids = rows[index]["input_ids"][at : at + n]
            text = tok.tokenizer.decode(ids, skip_special_tokens=False)
            assert "\n".join(seg["text"]) == text.removesuffix("\n")  # every character
            if d == BOOK_ID:
                assert window[4] == "the end (of 10 windows)"
                assert seg["info"][1] == f"{' ' * 9}book, origin {BOOK}" and not seg["marks"]
                assert (_book_text() + EOT).endswith(text)
                continue
            files = _spanned_files(rows, docs, s, n)
            assert seg["info"][1:] == [
                f"{' ' * 9}code, origin json",
                f"{' ' * 9}files: {', '.join(files)}",
            ]
            assert [m.split()[2].rstrip(",") for m in seg["marks"]] == files
            starts = docs[d]["chapter_starts"]  # a window starts at a file when it can
            first = starts[docs[d]["files"].index(files[0])]
            continued = f"file {files[0]}, continued (it starts at document token {first})"
            assert (seg["marks"][0] == f"-------- {continued}") == (s not in starts)
            seen.add(s in starts)
            assert all("continued" not in m for m in seg["marks"][1:])
    assert seen == {True, False}  # json's middle window starts at a file, its last one inside


def test_defaults_errors_and_console_script(out, qwen3_dir, tmp_path, capsys):
    from pipeline.inspect import main

    rows = _rows(out)
    middle = next(i for i, r in enumerate(rows) if r["doc_ids"] == [BOOK_ID])
    assert main([str(out), "--sample", str(middle), "--tokenizer", str(qwen3_dir)]) == 0
    shown = capsys.readouterr().out  # the same tokenizer.json at another path is accepted
    assert "characters not shown; --max-chars 0 shows all" in shown and len(shown) < 2600
    cases = {
        ("--sample", str(len(rows))): f"--sample {len(rows)}: the train split has samples 0..",
        ("--sample", "0", "--split", "validation"): "the output has no validation samples",
    }
    for args, message in cases.items():
        assert main([str(out), *args]) == 2
        assert message in capsys.readouterr().err
    assert main([str(tmp_path), "--sample", "0"]) == 2
    assert "not a finished output" in capsys.readouterr().err
    other = tmp_path / "tokenizer.json"  # the same vocabulary, other bytes: not the output's
    other.write_text(json.dumps(json.loads((qwen3_dir / "tokenizer.json").read_text())))
    assert main([str(out), "--sample", "0", "--tokenizer", str(other)]) == 2
    assert "not the tokenizer" in capsys.readouterr().err
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["longctx-inspect"] == "pipeline.inspect:main"


def test_overlap_tokens_are_marked_as_repeating_the_previous_window(tmp_path):
    from pipeline.inspect import open_output, render, sample_view

    out = _run(tmp_path / "out", "--overlap", "64")
    output = open_output(str(out))
    views = [sample_view(output, i) for i in range(len(_rows(out)))]
    segs = sorted((s for v in views for s in v.segments), key=lambda s: s.doc_start)
    assert [s.context for s in segs] == [0] + [64] * (len(segs) - 1)
    fresh = []
    for previous, seg in zip([None, *segs], segs, strict=False):
        repeated = "".join(p.text for p in seg.pieces if p.repeated)
        assert previous is None or (repeated and previous.text.endswith(repeated))
        fresh.append("".join(p.text for p in seg.pieces if not p.repeated))
    assert "".join(fresh) == _book_text() + EOT
    printed = render(next(v for v in views if v.segments[0].doc_start > 0), max_chars=0)
    assert "-------- 64 tokens that repeat the end of the previous window" in printed
    assert "-------- new tokens from here" in printed
