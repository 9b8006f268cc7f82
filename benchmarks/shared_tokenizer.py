"""Does a tokenizer loaded once and shared by forked processes encode as fast as one loaded in
each process? (The pipeline's workers are forked from a server that loaded it; the ceiling's
processes each load their own.)

    python benchmarks/shared_tokenizer.py [--procs 16] [--mb 4] [--rounds 2]

Each of --procs processes encodes the same --mb MB of the books (64 KB chunks,
encode_batch_fast, RAYON_NUM_THREADS=1), timed inside the process after its tokenizer is
ready; ``shared``: forked after one load in the parent; ``own``: forked first, each loads
its own. Prints the per-process encode seconds of each, rounds alternated, and the machine's
NUMA layout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _texts(books: Path, mb: float) -> list[str]:
    out, size = [], 0
    for p in sorted(books.glob("*.txt")):
        t = p.read_text("utf-8", errors="replace")
        for i in range(0, len(t), 65536):
            out.append(t[i : i + 65536])
            size += len(out[-1])
            if size >= mb * 1e6:
                return out
    return out


def _encode(tok, texts) -> float:
    t = time.perf_counter()
    for i in range(0, len(texts), 64):
        tok.encode_batch_fast(texts[i : i + 64], add_special_tokens=False)
    return time.perf_counter() - t


def _run(kind: str, procs: int, path: str, texts: list[str]) -> list[float]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path) if kind == "shared" else None
    if tok is not None:
        tok.encode("warm up")
    pipes, pids = [], []
    for _ in range(procs):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            mine = tok if tok is not None else Tokenizer.from_file(path)
            if tok is None:
                mine.encode("warm up")
            os.write(w, f"{_encode(mine, texts)}".encode())
            os._exit(0)
        os.close(w)
        pipes.append(r)
        pids.append(pid)
    out = []
    for r, pid in zip(pipes, pids, strict=True):
        out.append(float(os.read(r, 64).decode()))
        os.close(r)
        os.waitpid(pid, 0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=16)
    ap.add_argument("--mb", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json")
    ap.add_argument("--books", type=Path, required=True)
    args = ap.parse_args()
    nodes = sorted(Path("/sys/devices/system/node").glob("node[0-9]*"))
    layout = {n.name: (n / "cpulist").read_text().strip() for n in nodes}
    print("NUMA nodes:", layout or "none listed", flush=True)
    texts = _texts(args.books, args.mb)
    res: dict = {"shared": [], "own": []}
    for r in range(args.rounds):
        for kind in ("shared", "own"):
            walls = _run(kind, args.procs, args.tokenizer, texts)
            res[kind].append(walls)
            print(
                f"round {r + 1} {kind}: median {statistics.median(walls):.2f} s, "
                f"{min(walls):.2f}-{max(walls):.2f}",
                flush=True,
            )
    print(json.dumps({"numa": layout, "encode_s": res, "mb": args.mb, "procs": args.procs}))


if __name__ == "__main__":
    main()
