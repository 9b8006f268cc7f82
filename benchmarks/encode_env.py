"""The tokenizer's speed under process settings that a worker may inherit: glibc's malloc
variables (Dask's nannies set ``MALLOC_TRIM_THRESHOLD_=65536``; ``MALLOC_ARENA_MAX=2`` is common
advice for Python services), ``TOKENIZERS_PARALLELISM=false``, and the thread that calls the
encoder (the main thread, whose allocations come from glibc's main arena, or another).

    python benchmarks/encode_env.py [--files 14] [--passes 1] [--rounds 2] [--results FILE]

Each variant runs in a fresh process (the variables act as the process starts): the first
``--files`` book files of the shared books (``benchmarks/common.py``), ``--passes`` times over
(the encoder's cache is per call: each pass is new work), cut into the pipeline's
64 KB chunks (``transforms.samples.tokenize.chunk_text``), encoded 64 chunks a call
(``ENCODE_GROUP``) with ``encode_batch_fast`` and copied to int32 arrays, as the tokenize step
does, with ``RAYON_NUM_THREADS=1`` (one worker's share of the cores at N = cores). The variants
alternate round after round. Per run: wall seconds, user and system CPU-s, minor page faults
(``getrusage``), tokens. Run by hand; results go to docs/benchmarks.md with machine, date and
commit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BOOKS, QWEN3, commit, machine, write_json_atomic  # noqa: E402

# name -> (environment added, the thread that calls the encoder)
VARIANTS = {
    "as_is": ({}, "thread"),
    "trim_65536": ({"MALLOC_TRIM_THRESHOLD_": "65536"}, "thread"),
    "fixed_thresholds": (
        {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20)},
        "thread",
    ),
    "arena_max_2": ({"MALLOC_ARENA_MAX": "2"}, "thread"),
    "no_parallelism": ({"TOKENIZERS_PARALLELISM": "false"}, "thread"),
    "no_parallelism_main_thread": ({"TOKENIZERS_PARALLELISM": "false"}, "main"),
    "main_thread": ({}, "main"),
}


def _child(files: int, passes: int, where: str) -> dict:
    import numpy as np

    from transforms.samples.tokenize import ENCODE_GROUP, chunk_text, load_tokenizer

    tok = load_tokenizer(str(QWEN3) if QWEN3.exists() else None).tokenizer
    books = sorted(BOOKS.glob("*.txt"))[:files]
    texts = [p.read_text("utf-8", errors="replace") for p in books] * passes
    out: dict = {}

    def work():
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        n = 0
        for text in texts:
            pieces = chunk_text(text)
            ids = []
            for lo in range(0, len(pieces), ENCODE_GROUP):
                group = tok.encode_batch_fast(
                    pieces[lo : lo + ENCODE_GROUP], add_special_tokens=False
                )
                ids.extend(np.asarray(e.ids, dtype=np.int32) for e in group)
            n += int(np.concatenate(ids).size)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        out.update(
            wall_s=round(time.perf_counter() - t0, 3),
            user_s=round(r1.ru_utime - r0.ru_utime, 3),
            system_s=round(r1.ru_stime - r0.ru_stime, 3),
            minor_faults=r1.ru_minflt - r0.ru_minflt,
            tokens=n,
        )

    if where == "main":
        work()
    else:
        t = threading.Thread(target=work)
        t.start()
        t.join()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=14)
    ap.add_argument("--passes", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--results", type=Path, default=None, help="JSON to write")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.files, args.passes, args.child)))
        return 0
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    runs: dict = {n: [] for n in names}
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    base.pop("TOKENIZERS_PARALLELISM", None)
    base["RAYON_NUM_THREADS"] = "1"
    for r in range(args.rounds):
        for name in names:
            extra, where = VARIANTS[name]
            cmd = [sys.executable, __file__, "--files", str(args.files), "--passes",
                   str(args.passes), "--child", where]  # fmt: skip
            proc = subprocess.run(
                cmd, env={**base, **extra}, capture_output=True, text=True, check=True
            )
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[name].append(res)
            print(f"round {r + 1} {name:28s} {json.dumps(res)}", flush=True)
    summary = {
        n: {
            "env": VARIANTS[n][0],
            "thread": VARIANTS[n][1],
            "wall_s": [x["wall_s"] for x in runs[n]],
            "user_s": [x["user_s"] for x in runs[n]],
            "system_s": [x["system_s"] for x in runs[n]],
            "minor_faults": [x["minor_faults"] for x in runs[n]],
            "median_wall_over_as_is": round(
                statistics.median(x["wall_s"] for x in runs[n])
                / statistics.median(x["wall_s"] for x in runs["as_is"]),
                3,
            )
            if "as_is" in runs
            else None,
        }
        for n in names
    }
    for n, s in summary.items():
        print(f"{n:28s} wall {s['wall_s']} user {s['user_s']} faults {s['minor_faults']} "
              f"x{s['median_wall_over_as_is']}")  # fmt: skip
    if args.results:
        write_json_atomic(
            args.results,
            {
                "title": "the tokenizer under a worker's process settings (benchmarks/encode_env.py)",
                "command": "python benchmarks/encode_env.py " + " ".join(sys.argv[1:]),
                "machine": machine(),
                "commit": commit(),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "files": args.files,
                "passes": args.passes,
                "rounds": args.rounds,
                "summary": summary,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
