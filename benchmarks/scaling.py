"""Scaling: the benchmark corpus at 1x, 4x and 16x (copies under new names), DirectRunner.

    python benchmarks/scaling.py [--seq-len 65536] [--factors 1,4,16]

Wall time and peak RSS of the whole process tree per size. Copies are identical by design, so
duplicate removal would drop them: the runs use ``--no-dedup`` to measure the same work scaled.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    BOOKS,
    PACKAGES,
    STDLIB,
    corpus_args,
    pipeline_cmd,
    record,
    run_measured,
    table,
)


def make_copies(root: Path, factor: int) -> None:
    """``factor`` copies of the corpus: books/cK/*.txt and repos/<pkg>-K/."""
    for k in range(factor):
        dst = root / "books" / f"c{k:02d}"
        dst.mkdir(parents=True)
        for p in BOOKS.iterdir():
            if p.suffix in (".txt", ".md"):
                os.link(p, dst / p.name) if _same_fs(p, dst) else shutil.copy(p, dst / p.name)
        for pkg in PACKAGES:
            shutil.copytree(
                STDLIB / pkg,
                root / "repos" / f"{pkg}-{k:02d}",
                ignore=shutil.ignore_patterns("__pycache__"),
            )


def _same_fs(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq-len", type=int, default=65536)
    ap.add_argument("--factors", default="1,4,16")
    args = ap.parse_args()
    rows = []
    base_wall = base_rss = base_tokens = None
    for factor in (int(f) for f in args.factors.split(",")):
        tmp = Path(tempfile.mkdtemp(prefix="longctx-scale-"))
        try:
            make_copies(tmp / "corpus", factor)
            res = run_measured(
                pipeline_cmd(corpus_args(tmp / "corpus"), args.seq_len, tmp / "out", "--no-dedup")
            )
            m = json.loads((tmp / "out" / "manifest.json").read_text())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        tokens = m["counts"]["document_tokens"]
        if base_wall is None:
            base_wall, base_rss, base_tokens = res["wall_s"], res["peak_rss_mb"], tokens
        rows.append(
            [
                f"{factor}x",
                f"{tokens:,}",
                f"{res['wall_s']:.1f}",
                f"{res['wall_s'] / base_wall / (tokens / base_tokens):.2f}",
                f"{tokens / res['wall_s']:,.0f}",
                f"{res['peak_rss_mb']:,.0f}",
                f"{res['peak_rss_mb'] / base_rss:.2f}",
            ]
        )
        print(rows[-1], flush=True)
    record(
        f"Scaling, --seq-len {args.seq_len}",
        f"python benchmarks/scaling.py --seq-len {args.seq_len} --factors {args.factors}",
        table(
            [
                "corpus",
                "tokens",
                "wall s",
                "time per token vs 1x",
                "tokens/s",
                "peak RSS (MB)",
                "RSS vs 1x",
            ],
            rows,
        ),
    )


if __name__ == "__main__":
    main()
