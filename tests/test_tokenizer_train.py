"""train.tokenizer on real books and real standard-library code: exact vocabulary size, round
trips, byte-identical reruns, the readers' rules, and the three loaders that must accept it
(the pipeline's --tokenizer, transformers' AutoTokenizer, train.random_model)."""

from __future__ import annotations

import json
import os
import unicodedata

import pytest

from tests.conftest import STDLIB, run_cli
from train.tokenizer import SPECIAL_TOKENS, iter_texts, save_tokenizer, train_tokenizer

BOOKS = ("kafka-metamorphosis.txt", "gilman-the-yellow-wallpaper.txt")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, books_dir):
    paths = [str(books_dir / b) for b in BOOKS] + [str(STDLIB / "json")]
    tok, stats = train_tokenizer(paths, 1024)
    return save_tokenizer(tok, tmp_path_factory.mktemp("tok") / "bpe1k"), tok, stats, paths


def test_exact_vocabulary_and_special_tokens_first(trained):
    _, tok, stats, _ = trained
    assert tok.get_vocab_size(with_added_tokens=True) == 1024 == stats["vocab_size"]
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    assert stats["files"] == 2 + len([p for p in os.listdir(STDLIB / "json") if p.endswith(".py")])


def test_round_trips_books_code_and_any_unicode(trained, books_dir):
    _, tok, _, _ = trained
    texts = [
        (books_dir / "wells-the-time-machine.txt").read_text(encoding="utf-8")[:20000],  # unseen
        (STDLIB / "textwrap.py").read_text(encoding="utf-8"),
        "π ≈ 3.14159; naïve café, 東京, emoji 🙂, tabs\t\tand  spaces\r\n<|endoftext|> as text",
    ]
    for text in texts:
        text = unicodedata.normalize("NFC", text)  # the tokenizer normalises to NFC
        ids = tok.encode(text).ids
        assert tok.decode(ids, skip_special_tokens=False) == text
    # digits are single tokens (the Qwen2 pre-tokenizer): a passkey is one token per digit
    assert [tok.id_to_token(i) for i in tok.encode(" 71432").ids] == ["Ġ", "7", "1", "4", "3", "2"]


def test_rerun_is_byte_identical(trained, tmp_path):
    out, _, _, paths = trained
    again, _ = train_tokenizer(paths, 1024)
    save_tokenizer(again, tmp_path / "again")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name


def test_reading_uses_the_project_rules(tmp_path, books_dir):
    data = tmp_path / "data"
    (data / "sub" / ".git").mkdir(parents=True)
    (data / "sub" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")  # skipped folder
    (data / "sub" / "mod.py").write_text("def f():\n    return 1\n")
    (data / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))  # binary by extension
    (data / "blob").write_bytes(b"\x00\x01\x02" * 100)  # binary by content
    book = (books_dir / BOOKS[1]).read_bytes()
    (data / "book.txt").write_bytes(book)
    os.symlink(books_dir / BOOKS[0], data / "link.txt")  # never followed
    stats: dict = {}
    text = "".join(
        iter_texts([str(data)], max_file_bytes=2**20, max_total_chars=10**9, stats=stats)
    )
    assert stats["files"] == 2 and stats["rejects"] == {"binary": 2, "symlink": 1}
    assert "def f():" in text and "*** START OF" in book.decode() and "*** START OF" not in text
    capped: dict = {}
    text = "".join(
        iter_texts([str(data)], max_file_bytes=2**20, max_total_chars=5000, stats=capped)
    )
    assert len(text) == capped["chars"] == 5000 and capped["truncated"]


def test_cli_output_loads_in_pipeline_transformers_and_random_model(trained, tmp_path, books_dir):
    from transformers import AutoTokenizer

    from train.random_model import build
    from transforms.samples.tokenize import load_tokenizer

    out = tmp_path / "tok"
    proc = run_cli(
        "train.tokenizer", "--data", books_dir / BOOKS[0], "--data", STDLIB / "json",
        "--vocab-size", "1024", "--out", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["vocab_size"] == 1024 and summary["rejects"] == {}
    loaded = load_tokenizer(str(out))  # what pipeline.run --tokenizer OUT does
    assert (loaded.end_of_text, loaded.end_of_text_id) == ("<|endoftext|>", 0)
    assert (loaded.file_sep_id, loaded.repo_name_id, loaded.vocab_size) == (1, 2, 1024)
    hf = AutoTokenizer.from_pretrained(out)
    assert hf.eos_token == "<|endoftext|>" and hf.eos_token_id == 0 and len(hf) == 1024
    text = "The pass key is 71432.\n"
    assert hf.encode(text, add_special_tokens=False) == loaded.tokenizer.encode(text).ids
    model = build("tiny", str(out), str(tmp_path / "model"))
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["vocab_size"] == 1024 and cfg["eos_token_id"] == 0


def test_cli_refuses_bad_arguments(tmp_path):
    def refuse(*args):
        proc = run_cli("train.tokenizer", "--out", tmp_path / "o", *map(str, args))
        assert proc.returncode == 2, proc.stderr
        assert not (tmp_path / "o").exists()
        return proc.stderr

    assert "--data" in refuse("--data", tmp_path / "nowhere")
    assert "--vocab-size 100" in refuse("--data", STDLIB / "json", "--vocab-size", "100")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "x.png").write_bytes(b"\x89PNG" + bytes(10))
    assert "no text" in refuse("--data", tmp_path / "bin")


@pytest.mark.slow
def test_pipeline_runs_with_the_trained_tokenizer(trained, tmp_path, books_dir):
    """The repository format uses the trained <|file_sep|> / <|repo_name|> tokens."""
    import numpy as np
    import pyarrow as pa

    tok_dir = trained[0]
    out = tmp_path / "out"
    proc = run_cli(
        "pipeline.run", "--runner", "DirectRunner", "--books", books_dir / BOOKS[1],
        "--repos", STDLIB / "json", "--tokenizer", tok_dir, "--seq-len", "2048", "--output", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer"]["vocab_size"] == 1024
    ids = np.concatenate(
        [
            np.asarray(
                pa.ipc.open_stream(p.read_bytes())
                .read_all()
                .column("input_ids")
                .combine_chunks()
                .flatten()
            )  # fmt: skip
            for p in sorted((out / "shards").glob("*.arrow"))
        ]
    )
    assert ids.max() < 1024 and (ids == 2).sum() == 1 and (ids == 1).sum() >= 5  # repo, files
    assert (ids == 0).sum() == 2  # one end-of-text per document
