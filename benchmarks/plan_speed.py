"""Time of the whole-corpus plan (``transforms.samples.plan.plan_samples``) against the number of
sources: the plan runs in one process after the tokenize stage, on every run's path.

    python benchmarks/plan_speed.py [--sources 458,20000] [--seq-len 65536] [--rounds 3]

The documents are made up, one a source, their token counts drawn (seeded) like the scaling
corpus's: every other one a book of 20K-300K tokens, the rest code of 2K-60K, windowed at
``--seq-len`` as the tokenize step windows them. Prints, per count, the plan's seconds (the
least of ``--rounds``) and its samples.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transforms.samples.plan import DocInfo, PlanSettings, plan_samples  # noqa: E402


def documents(n: int, seq_len: int, seed: int = 0) -> list[DocInfo]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        book = i % 2 == 1
        tokens = rng.randint(20_000, 300_000) if book else rng.randint(2_000, 60_000)
        starts = tuple(range(0, tokens, seq_len))
        docs.append(
            DocInfo(
                doc_id=f"d{i:07d}",
                n_tokens=tokens,
                kind="book" if book else "code",
                group=f"g{i}",
                source=f"s{i}",
                origin=f"o{i}",
                score=None,
                starts=starts,
                lengths=tuple(min(seq_len, tokens - s) for s in starts),
                cache_key=None,
                reused=False,
            )  # fmt: skip
        )
    return docs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", default="458,20000")
    ap.add_argument("--seq-len", type=int, default=65536)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    settings = PlanSettings(seq_len=args.seq_len)
    for n in (int(x) for x in args.sources.split(",")):
        docs = documents(n, args.seq_len)
        best, samples = float("inf"), 0
        for _ in range(args.rounds):
            start = time.perf_counter()
            samples = plan_samples(docs, settings).n_samples
            best = min(best, time.perf_counter() - start)
        print(f"{n:>7} sources: plan {best:.3f} s, {samples} samples", flush=True)


if __name__ == "__main__":
    main()
