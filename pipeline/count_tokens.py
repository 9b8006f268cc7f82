"""Count tokens of files, folders of books, repositories and records without writing shards.

    python -m pipeline.count_tokens ../shared/data/books ~/src/project --seq-len 65536
    python -m pipeline.count_tokens corpus.jsonl --tokenizer Qwen/Qwen3-8B --json

Counts exactly what ``pipeline.run`` would put in its documents: the same readers, Gutenberg
stripping, rejects, dependency order, repository headers and end-of-text token (duplicate
removal across inputs is not applied). Per input: bytes, tokens, tokens per byte, the samples
of ``--seq-len`` its documents would fill on their own (windows at boundaries, best-fit
packing), and how many documents are longer than ``--seq-len``.

An input is a book file (.txt .md .html .htm .epub), a records file (.jsonl .parquet), a
repository archive (.zip .tar.gz), or a folder: a folder holding only book files is a folder
of books, any other folder is one repository (``--kind`` overrides). Exit status 0, or 2 for a
missing path or an unusable ``--tokenizer``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from pipeline.discover import discover, read_source
from transforms.code.dependencies import C_FAMILY, GO, JS, JVM, PY, RUST
from transforms.documents import Reject, RejectError
from transforms.inputs.archives import ARCHIVE_SUFFIXES
from transforms.inputs.reading import BOOK_SUFFIXES, ReadSettings, display_path, walk_folder
from transforms.inputs.records import RECORD_SUFFIXES
from transforms.samples.plan import DocInfo, PlanSettings, plan_samples
from transforms.samples.tokenize import TokenizerError, encode_and_window, load_tokenizer
from transforms.samples.windowing import default_slack

SOURCE_SUFFIXES = PY + JS + GO + RUST + C_FAMILY + JVM


def _classify(path: str, kind: str) -> str:
    low = path.lower()
    if os.path.isfile(path):
        if low.endswith(RECORD_SUFFIXES):
            return "records"
        if low.endswith(ARCHIVE_SUFFIXES):
            return "repo"
        return "book"
    if kind != "auto":
        return {"book": "books", "code": "repo"}[kind]
    # A folder of books may hold a catalogue or licence (MANIFEST.tsv, README); a repository
    # holds source files. Books when there are book files and no source file.
    books = False
    for item in walk_folder(path):
        if isinstance(item, Reject):
            continue
        name = item[0].lower()
        if name.endswith(SOURCE_SUFFIXES):
            return "repo"
        books = books or name.endswith(BOOK_SUFFIXES)
    return "books" if books else "repo"


def _documents(path: str, what: str, limits: ReadSettings):
    """Yield TextDocuments and Rejects of one input, as the pipeline reads them (the same
    discovery and the same per-source reader)."""
    flag = {"book": "books", "books": "books", "repo": "repos", "records": "documents"}[what]
    sources, rejects = discover(**{flag: [path]})
    yield from rejects
    for src in sources:
        try:
            yield from read_source(src, limits)
        except RejectError as err:
            yield Reject(display_path(src.path), err.reason, err.detail)


def count_input(path: str, tok, *, seq_len: int, kind: str, limits: ReadSettings) -> dict:
    what = _classify(path, kind)
    infos, n_bytes, n_rejects = [], 0, 0
    for item in _documents(path, what, limits):
        if isinstance(item, Reject):
            n_rejects += 1
            continue
        enc, starts, lengths = encode_and_window(
            item, tok, seq_len=seq_len, overlap=0, slack=default_slack(seq_len)
        )
        n = int(enc.tokens.shape[0])
        infos.append(
            DocInfo(item.doc_id, n, kind=item.kind, group=item.kind, starts=starts, lengths=lengths)
        )
        n_bytes += item.n_bytes
    tokens = sum(d.n_tokens for d in infos)
    samples = plan_samples(infos, PlanSettings(seq_len=seq_len)).n_samples if infos else 0
    return {
        "path": path,
        "read_as": what,
        "documents": len(infos),
        "bytes": n_bytes,
        "tokens": tokens,
        "tokens_per_byte": round(tokens / n_bytes, 4) if n_bytes else 0.0,
        "samples": samples,
        "documents_longer_than_seq_len": sum(d.n_tokens > seq_len for d in infos),
        "rejects": n_rejects,
    }


def _print_table(rows: list[dict], total: dict, seq_len: int) -> None:
    header = [
        "input",
        "read as",
        "docs",
        "bytes",
        "tokens",
        "tok/byte",
        f"samples@{seq_len}",
        f"docs>{seq_len}",
        "rejects",
    ]
    keys = [
        "path",
        "read_as",
        "documents",
        "bytes",
        "tokens",
        "tokens_per_byte",
        "samples",
        "documents_longer_than_seq_len",
        "rejects",
    ]
    cells = [
        [f"{r[k]:,}" if isinstance(r[k], int) else str(r[k]) for k in keys] for r in [*rows, total]
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("-" * len(line))
    for k, c in enumerate(cells):
        if k == len(cells) - 1:
            print("-" * len(line))
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m pipeline.count_tokens",
        description=__doc__.split("\n")[0],
    )
    ap.add_argument("paths", nargs="+", metavar="PATH")
    ap.add_argument("--tokenizer", default=None, help="as pipeline.run (default: bundled Qwen3)")
    ap.add_argument("--seq-len", type=int, default=65536, help="sample length (default 65536)")
    ap.add_argument(
        "--kind",
        choices=("auto", "book", "code"),
        default="auto",
        help="how to read a folder: books, one repository, or auto (default)",
    )
    ap.add_argument("--max-file-mb", type=float, default=32.0, help="as pipeline.run (default 32)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)
    if args.seq_len <= 0:
        print(f"error: --seq-len must be > 0, got {args.seq_len}", file=sys.stderr)
        return 2
    for p in args.paths:
        if not os.path.lexists(p):
            print(f"error: {p}: no such file or folder", file=sys.stderr)
            return 2
    try:
        tok = load_tokenizer(args.tokenizer)
    except TokenizerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    limits = ReadSettings(max_file_bytes=int(args.max_file_mb * 2**20))
    show = sys.stderr.isatty() and not args.json
    rows = []
    started = time.time()
    for k, path in enumerate(args.paths):
        if show:
            print(
                f"\r[{k}/{len(args.paths)}] {path[-60:]:60s}", end="", file=sys.stderr, flush=True
            )
        rows.append(count_input(path, tok, seq_len=args.seq_len, kind=args.kind, limits=limits))
    if show:
        print(f"\r{' ' * 70}\r", end="", file=sys.stderr)
    keys = ("documents", "bytes", "tokens", "samples", "documents_longer_than_seq_len", "rejects")
    total = {"path": "total", "read_as": "", **{k: sum(r[k] for r in rows) for k in keys}}
    total["tokens_per_byte"] = round(total["tokens"] / total["bytes"], 4) if total["bytes"] else 0.0
    if args.json:
        print(
            json.dumps(
                {
                    "seq_len": args.seq_len,
                    "tokenizer": tok.describe(),
                    "inputs": rows,
                    "total": total,
                },
                indent=1,
            )
        )
    else:
        _print_table(rows, total, args.seq_len)
        rate = total["tokens"] / max(time.time() - started, 1e-9)
        print(
            f"\n{total['tokens']:,} tokens with {tok.name} in {time.time() - started:.1f}s ({rate:,.0f} tokens/s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
