"""Throughput and packing quality, side by side in one run on the same corpus, tokenizer, cores.

    python benchmarks/throughput.py [--seq-len 65536] [--num-proc 2]

1. ceiling: ``tokenizers.Tokenizer.encode_batch_fast`` alone over the same document texts, cut
   into ~64 KB chunks at line breaks (the fastest way to call the tokenizer; reading excluded);
2. peer: what users do instead: ``datasets`` ``map(tokenize, num_proc=N)`` +
   ``trl.pack_dataset(strategy="bfd_split")`` + ``save_to_disk`` (reading excluded);
3. pipeline: ``python -m pipeline.run --runner DirectRunner``, the whole process, read to
   manifest (also: dedup, dependency order, scores, report).

Packing quality is compared on the same token lengths: samples over the lower bound
ceil(tokens / seq_len), fill rate, documents that fit but were split, tokens dropped.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    BOOKS,
    PACKAGES,
    QWEN3,
    STDLIB,
    corpus_args,
    pipeline_cmd,
    record,
    run_measured,
    table,
)


def corpus_texts() -> list[str]:
    """The document texts the pipeline tokenizes (books stripped; repositories in order)."""
    from transforms.inputs.reading import ReadSettings, read_book
    from transforms.inputs.repository import read_repository

    texts = []
    for p in sorted(BOOKS.iterdir()):
        if p.suffix in (".txt", ".md"):
            texts.append(read_book(str(p), "b", ReadSettings()).texts[0])
    for pkg in PACKAGES:
        doc, _ = read_repository(str(STDLIB / pkg), f"code/{pkg}", pkg, ReadSettings())
        texts.append("".join(f"{f}\n{t}" for f, t in zip(doc.files, doc.texts, strict=True)))
    return texts


def ceiling(texts: list[str]) -> tuple[float, int]:
    from tokenizers import Tokenizer

    from transforms.samples.tokenize import chunk_text

    tok = Tokenizer.from_file(str(QWEN3 / "tokenizer.json"))
    chunks = [c for t in texts for c in chunk_text(t)]
    start = time.perf_counter()
    enc = tok.encode_batch_fast(chunks, add_special_tokens=False)
    wall = time.perf_counter() - start
    return wall, sum(len(e.ids) for e in enc)


def peer(texts: list[str], seq_len: int, num_proc: int, out: Path) -> dict:
    import datasets
    from transformers import AutoTokenizer
    from trl import pack_dataset

    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(str(QWEN3))
    start = time.perf_counter()
    ds = datasets.Dataset.from_dict({"text": texts})
    ds = ds.map(
        lambda b: {"input_ids": tok(b["text"], add_special_tokens=False)["input_ids"]},
        batched=True,
        batch_size=1,
        num_proc=num_proc,
        remove_columns=["text"],
    )
    lengths = [len(x) for x in ds["input_ids"]]
    packed = pack_dataset(ds, seq_len, strategy="bfd_split")
    packed.save_to_disk(str(out))
    wall = time.perf_counter() - start
    rows = [len(x) for x in packed["input_ids"]]
    return {"wall": wall, "doc_lengths": lengths, "rows": rows}


def _packing(out: Path, seq_len: int) -> tuple[dict, list[int], int]:
    """A pipeline output's manifest, sample lengths, and documents that fit but were split."""
    import pyarrow as pa

    def read(path: Path) -> pa.Table:
        return pa.ipc.open_stream(path.read_bytes()).read_all()

    manifest = json.loads((out / "manifest.json").read_text())
    rows = [
        t for s in manifest["shards"] for t in read(out / s["path"]).column("n_tokens").to_pylist()
    ]
    docs = read(out / "documents.arrow")
    lengths, segments = docs.column("n_tokens").to_pylist(), docs.column("n_segments").to_pylist()
    split = sum(1 for n, k in zip(lengths, segments, strict=True) if n <= seq_len and k > 1)
    return manifest, rows, split


def quality(tokens: int, rows: list[int], seq_len: int, split_fitting: int) -> list:
    bound = math.ceil(tokens / seq_len)
    return [
        len(rows),
        bound,
        f"{(len(rows) - bound) / bound:+.2%}",
        f"{sum(rows) / (len(rows) * seq_len):.4f}",
        split_fitting,
        tokens - sum(rows),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq-len", type=int, default=65536)
    ap.add_argument("--num-proc", type=int, default=2)
    args = ap.parse_args()
    texts = corpus_texts()
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6

    c_wall, c_tokens = ceiling(texts)
    tmp = Path(tempfile.mkdtemp(prefix="longctx-bench-"))
    try:
        p = peer(texts, args.seq_len, args.num_proc, tmp / "peer")
        res = run_measured(pipeline_cmd(corpus_args(), args.seq_len, tmp / "out"))
        m, sample_rows, fit_split = _packing(tmp / "out", args.seq_len)
        # packing only: the same corpus with --fill-gaps (not timed)
        run_measured(pipeline_cmd(corpus_args(), args.seq_len, tmp / "filled", "--fill-gaps"))
        filled, filled_rows, filled_fit_split = _packing(tmp / "filled", args.seq_len)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    p_tokens = sum(p["doc_lengths"])
    pipe_tokens = m["counts"]["document_tokens"]
    pipe_wall = res["wall_s"]
    speed = [
        [
            "ceiling: encode_batch_fast, 64 KB chunks",
            f"{c_wall:.1f}",
            f"{c_tokens / c_wall:,.0f}",
            f"{mb / c_wall:.2f}",
            "1.00",
        ],
        [
            f"peer: datasets map (num_proc={args.num_proc}) + trl bfd_split + save_to_disk",
            f"{p['wall']:.1f}",
            f"{p_tokens / p['wall']:,.0f}",
            f"{mb / p['wall']:.2f}",
            f"{(p_tokens / p['wall']) / (c_tokens / c_wall):.2f}",
        ],
        [
            "pipeline: python -m pipeline.run --runner DirectRunner (whole process)",
            f"{pipe_wall:.1f}",
            f"{pipe_tokens / pipe_wall:,.0f}",
            f"{mb / pipe_wall:.2f}",
            f"{(pipe_tokens / pipe_wall) / (c_tokens / c_wall):.2f}",
        ],
    ]
    body = f"Corpus: 14 books + {len(PACKAGES)} stdlib packages, {mb:.1f} MB of text, {len(texts)} documents.\n\n"
    body += table(["path", "wall s", "tokens/s", "MB/s", "x ceiling"], speed)
    body += (
        f"\n\npipeline / ceiling = {(pipe_tokens / pipe_wall) / (c_tokens / c_wall):.2f}; "
        f"pipeline / peer = {(pipe_tokens / pipe_wall) / (p_tokens / p['wall']):.2f}; "
        f"pipeline peak RSS {res['peak_rss_mb']:,.0f} MB.\n\n"
    )
    peer_fit_split = 0  # bfd_split only splits sequences longer than seq_len
    body += table(
        [
            "packing",
            "samples",
            "lower bound",
            "over bound",
            "fill",
            "fitting docs split",
            "tokens dropped",
        ],
        [
            [
                "pipeline (whole-corpus related BFD)",
                *quality(pipe_tokens, sample_rows, args.seq_len, fit_split),
            ],
            [
                "pipeline --fill-gaps (split documents poured into free room)",
                *quality(
                    filled["counts"]["document_tokens"], filled_rows, args.seq_len, filled_fit_split
                ),
            ],
            [
                "trl pack_dataset bfd_split",
                *quality(p_tokens, p["rows"], args.seq_len, peer_fit_split),
            ],
        ],
    )
    body += (
        "\n\nThe pipeline's token counts include one end-of-text token per document and the "
        "repository/file headers; the peer tokenizes the same texts without them."
    )
    record(
        f"Throughput and packing, --seq-len {args.seq_len}",
        f"python benchmarks/throughput.py --seq-len {args.seq_len} --num-proc {args.num_proc}",
        body,
    )


if __name__ == "__main__":
    main()
