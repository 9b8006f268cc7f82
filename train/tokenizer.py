"""Train a byte-level BPE tokenizer for small from-scratch models on books and code.

    python -m train.tokenizer --data ../shared/data/books --data /usr/lib/python3.11 \\
        --vocab-size 16384 --out tokenizers/bpe16k

A 151K vocabulary (Qwen3) makes a small model mostly embedding: at hidden 768 each of the
embedding and the LM head holds 116M parameters against 85M in 12 decoder layers, and the LM
head's logits dominate a step at long context. A 16K vocabulary cuts each to 12.6M.

What it builds, Qwen2-style so that the pipeline treats it like the Qwen3 tokenizer:

- NFC normalisation, the Qwen2 pre-tokenizer regex (digits one at a time, so a 5-digit passkey
  is 5 tokens) then byte-level (every byte string is encodable, nothing is ``<unk>``);
- special tokens ``<|endoftext|>`` (id 0: the end-of-text token every pipeline document ends
  with), ``<|file_sep|>`` and ``<|repo_name|>`` (ids 1-2: the pipeline's repository format);
- ``--vocab-size`` ids in all (specials, the 256 byte symbols and the merges), fewer only when
  the corpus has too few distinct pairs (the command says so).

Reading: the project's readers, not a copy of them. Every file under a ``--data`` folder
(sorted, recursively; ``.git`` and ``__pycache__`` skipped; symbolic links never followed) is
read with ``transforms.inputs.reading``: ``.txt``/``.md``/``.html``/``.htm``/``.epub`` as books
(Project Gutenberg boilerplate stripped), any other file as text (binary files and undecodable
text are skipped and counted by reason). Files above ``--max-file-mb`` are skipped; reading
stops once ``--max-total-mb`` of text is gathered. Texts are cut into ~64 KiB chunks at line
starts so the trainer's threads share the work.

Deterministic: the same inputs and flags give a byte-identical ``tokenizer.json`` (files are
read in sorted order; the BPE trainer's merge choice is a function of pair counts, ties broken
by the pair). Writes ``OUT/tokenizer.json``, ``OUT/tokenizer_config.json`` and
``OUT/special_tokens_map.json`` (loaded by ``--tokenizer OUT`` in the pipeline, by
``train.random_model --tokenizer OUT`` and by ``transformers.AutoTokenizer``), and
``OUT/training_summary.json`` (inputs, counts, settings). Exit 2: bad arguments (the message
names the flag), or no text read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = (END_OF_TEXT, "<|file_sep|>", "<|repo_name|>")
# The Qwen2 / Qwen3 pre-tokenizer pattern (as in their tokenizer.json).
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)


class TokenizerTrainingError(ValueError):
    """Unusable arguments or inputs; the message names the flag."""


def iter_texts(
    paths: list[str], *, max_file_bytes: int, max_total_chars: int, stats: dict
) -> Iterator[str]:
    """Texts of every usable file under ``paths`` in sorted order, ~64 KiB chunks.

    ``stats`` is filled as it goes: files read, characters, rejects by reason, truncated."""
    from transforms.documents import RejectError
    from transforms.inputs.reading import (
        BOOK_SUFFIXES,
        ReadSettings,
        read_book,
        read_file_text,
        walk_folder,
    )
    from transforms.samples.tokenize import chunk_text

    limits = ReadSettings(max_file_bytes=max_file_bytes)
    rejects: Counter = stats.setdefault("rejects", Counter())
    stats.setdefault("files", 0)
    stats.setdefault("chars", 0)
    stats["truncated"] = False
    for spec in paths:
        root = Path(spec).expanduser()
        if root.is_dir():
            entries = (e for e in walk_folder(str(root)) if isinstance(e, tuple))
            files = [abs_path for _rel, abs_path in entries]
        else:
            files = [str(root)]
        for path in files:
            try:
                if os.path.splitext(path)[1].lower() in BOOK_SUFFIXES:
                    text = "".join(read_book(path, path, limits).texts)
                else:
                    text = read_file_text(path, limits)[0]
            except RejectError as err:
                rejects[err.reason] += 1
                continue
            room = max_total_chars - stats["chars"]
            if len(text) > room:
                text = text[:room]
                stats["truncated"] = True
            stats["files"] += 1
            stats["chars"] += len(text)
            yield from chunk_text(text)
            if stats["truncated"]:
                return


def new_tokenizer():
    """An untrained Qwen2-style byte-level BPE (see the module docstring)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(
    paths: list[str],
    vocab_size: int,
    *,
    min_frequency: int = 2,
    max_file_bytes: int = 8 * 2**20,
    max_total_chars: int = 1024 * 2**20,
):
    """Train on the files under ``paths``; returns ``(tokenizers.Tokenizer, stats)``."""
    from tokenizers import pre_tokenizers, trainers

    if vocab_size < MIN_VOCAB:
        raise TokenizerTrainingError(
            f"--vocab-size {vocab_size}: needs at least {MIN_VOCAB} (256 bytes + special tokens)"
        )
    for p in paths:
        if not Path(p).expanduser().exists():
            raise TokenizerTrainingError(f"--data {p}: no such file or folder")
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    stats: dict = {}
    texts = iter_texts(
        paths, max_file_bytes=max_file_bytes, max_total_chars=max_total_chars, stats=stats
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if not stats.get("chars"):
        raise TokenizerTrainingError(
            f"--data {' '.join(paths)}: no text read (rejected: {dict(stats.get('rejects', {}))})"
        )
    stats["rejects"] = dict(sorted(stats["rejects"].items()))
    stats["vocab_size"] = tok.get_vocab_size(with_added_tokens=True)
    return tok, stats


def save_tokenizer(tok, out: str, *, model_max_length: int = 131072) -> Path:
    """``tokenizer.json`` plus the two small files transformers' AutoTokenizer reads."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    added = {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": END_OF_TEXT,
        "pad_token": END_OF_TEXT,
        "unk_token": None,
        "model_max_length": model_max_length,
    }
    special = {
        "eos_token": END_OF_TEXT,
        "pad_token": END_OF_TEXT,
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog="python -m train.tokenizer", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--data",
        action="append",
        required=True,
        help="a file, or a folder read recursively (books: .txt/.md/.html/.epub; anything "
        "else as code/text); repeatable",
    )
    p.add_argument("--vocab-size", type=int, default=16384, help="ids in all (default 16384)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--min-frequency", type=int, default=2, help="a merge needs this many occurrences"
    )
    p.add_argument("--max-file-mb", type=float, default=8.0, help="larger files are skipped (MB)")
    p.add_argument(
        "--max-total-mb",
        type=float,
        default=1024.0,
        help="stop reading after this many million characters of text (MB)",
    )
    a = p.parse_args(argv)
    try:
        tok, stats = train_tokenizer(
            a.data,
            a.vocab_size,
            min_frequency=a.min_frequency,
            max_file_bytes=int(a.max_file_mb * 2**20),
            max_total_chars=int(a.max_total_mb * 2**20),
        )
    except TokenizerTrainingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = save_tokenizer(tok, a.out)
    summary = {
        "inputs": a.data,
        "vocab_size_requested": a.vocab_size,
        "min_frequency": a.min_frequency,
        "max_file_mb": a.max_file_mb,
        "max_total_mb": a.max_total_mb,
        "special_tokens": list(SPECIAL_TOKENS),
        **stats,
    }
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"{out}: vocab {stats['vocab_size']} from {stats['files']} files, "
        f"{stats['chars'] / 1e6:.1f}M characters; skipped {stats['rejects'] or 'none'}"
        + (" (stopped at --max-total-mb)" if stats["truncated"] else "")
    )
    if stats["vocab_size"] < a.vocab_size:
        print(
            f"warning: the corpus gave only {stats['vocab_size']} ids of the {a.vocab_size} "
            "asked for (too few distinct pairs); add data or lower --vocab-size",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
