"""Where each process's threads were, in a time window: reads the stack samples that
``benchmarks/timeline/sitecustomize.py`` writes with ``BEAM_TIMELINE_STACKS=<ms>`` (each thread's
Python stack every <ms>, counted by half-second bucket) and prints, per process, its busy threads
and the functions they were in.

    BEAM_TIMELINE_STACKS=20 SCALING_ARGS=... bash benchmarks/scaling.sh   # or scaling.py
    python benchmarks/stacks.py WORK/timeline --from 3 --to 9.5 --top 12
    python benchmarks/stacks.py WORK/timeline --to 20 --parts   # the workers', by part
    python benchmarks/stacks.py WORK/timeline --to 8 --wall     # BEAM_TIMELINE_WALL=1: waits

Times are seconds after the driver's start (the process whose timeline has ``job.execute``).
Each sample puts the thread's CPU time since the last one on the stack it is in then: CPU seconds,
not wall time, so a thread waiting on a lock or a socket adds nothing; threads without a Python
frame (the tokenizer's rayon pool) show as "native threads". With ``BEAM_TIMELINE_WALL=1`` in the
run's environment each main thread's stack is also counted in wall seconds, kept apart and shown
by ``--wall``: where a thread waits shows there.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def driver_start(folder: Path) -> float:
    for f in folder.glob("*.json"):
        if f.name.endswith(".stacks.json"):
            continue
        try:
            acc = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if "job.execute" in acc:
            return acc["process.start"][2]
    raise SystemExit(f"{folder}: no driver timeline (no job.execute)")


def summarize(
    folder: Path,
    t_from: float,
    t_to: float,
    top: int,
    depth: int,
    min_s: float = 0.05,
    wall: bool = False,
) -> str:
    t0 = driver_start(folder)
    what = "wall s" if wall else "CPU s"  # --wall: the main threads' samples in wall seconds
    lines = [f"window {t_from:g}-{t_to:g} s after the driver's start ({what})"]
    for f in sorted(folder.glob("*.stacks.json")):
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as err:  # a process killed mid-write
            lines.append(f"\n## {f.name}: unreadable ({err})")
            continue
        bucket = data["bucket_s"]
        busy_threads: Counter = Counter()
        inclusive: Counter = Counter()
        leaves: Counter = Counter()
        for key, n in data.get("wall_s" if wall else "cpu_s", {}).items():
            b, thread, stack = key.split("|", 2)
            t = int(b) * bucket - t0
            if not (t_from <= t < t_to):
                continue
            busy_threads[thread] += n
            frames = stack.split(";")
            for fn in {":".join(fr.split(":")[:2]) for fr in frames}:
                inclusive[fn] += n
            leaves[" < ".join(reversed(frames[-depth:]))] += n
        if not busy_threads:
            continue
        seconds = sum(busy_threads.values())
        if seconds < min_s:
            continue
        argv = " ".join(data["argv"])[:90]
        lines.append(f"\n## {f.name.split('.')[0]} {argv}: {seconds:.2f} {what}")
        lines.append(
            "threads: " + ", ".join(f"{t} {n:.2f}" for t, n in busy_threads.most_common(6))
        )
        lines.append(f"functions (inclusive, {what}):")
        lines += [f"  {n:6.2f} {fn}" for fn, n in inclusive.most_common(top)]
        lines.append(f"innermost {depth} frames ({what}):")
        lines += [f"  {n:6.2f} {st}" for st, n in leaves.most_common(top)]
    return "\n".join(lines)


# --parts: what a stack is counted as, the first of these found in it (innermost frames last)
PARTS = (
    ("loading the tokenizer", ("load_tokenizer", "newline_tables")),
    ("Python around the encoder", ("encode_documents_full", "tokenize_entries")),
    ("the read step", ("read.py:process",)),
    ("the tokenize step, other", ("tokenize.py:process",)),
    ("the tokenizer's native threads (Rust)", ("(no Python frame)",)),
    ("an event loop (select and what ran between two samples)", ("selectors.py:select",)),
    ("imports", ("importlib",)),
)
WORKERS = ("pipeline/dask_cluster.py", "pipeline/worker_pool.py")  # in a process's argv


def parts(folder: Path, t_from: float, t_to: float) -> str:
    """The CPU-s of the workers' processes (a Dask cluster's, the worker pool's: ``WORKERS``
    in their command line, at least 1 CPU-s in the window) by ``PARTS``, summed."""
    t0 = driver_start(folder)
    total: Counter = Counter()
    processes = 0
    for f in sorted(folder.glob("*.stacks.json")):
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if not any(w in " ".join(data["argv"]) for w in WORKERS):
            continue
        mine: Counter = Counter()
        for key, n in data["cpu_s"].items():
            b, _thread, stack = key.split("|", 2)
            if not (t_from <= int(b) * data["bucket_s"] - t0 < t_to):
                continue
            name = next((p for p, needles in PARTS if any(x in stack for x in needles)), "other")
            mine[name] += n
        if sum(mine.values()) >= 1.0:
            processes += 1
            total.update(mine)
    lines = [f"window {t_from:g}-{t_to:g} s after the driver's start; {processes} worker processes"]
    lines += [f"  {n:7.2f}  {name}" for name, n in total.most_common()]
    lines.append(f"  {sum(total.values()):7.2f}  all")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="the BEAM_TIMELINE_DIR of the run")
    ap.add_argument("--from", dest="t_from", type=float, default=0.0)
    ap.add_argument("--to", dest="t_to", type=float, default=1e9)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--depth", type=int, default=4, help="innermost frames shown per stack")
    ap.add_argument("--min-s", type=float, default=0.05, help="leave out processes below this")
    ap.add_argument(
        "--parts", action="store_true", help="the workers' CPU-s by part (PARTS), summed"
    )
    ap.add_argument(
        "--wall", action="store_true",
        help="each main thread's stacks in wall seconds (a run with BEAM_TIMELINE_WALL=1)",
    )  # fmt: skip
    args = ap.parse_args()
    if args.parts:
        print(parts(args.folder, args.t_from, args.t_to))
        return
    print(summarize(args.folder, args.t_from, args.t_to, args.top, args.depth, args.min_s,
                    args.wall))  # fmt: skip


if __name__ == "__main__":
    main()
