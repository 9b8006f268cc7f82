"""The fixed start of a run, against the floor of any Beam run on the same machine.

    python benchmarks/startup.py [--rounds 3] [--workers 16] [--results FILE]

Each command is timed from outside (wall seconds of the whole process, as a user's scheduler
sees it), first once on its own (``cold``: the first run on a fresh machine, where Python may
still compile the modules' bytecode), then ``--rounds`` times more, alternated:

- ``python -c pass``: the interpreter;
- ``import apache_beam``; the worker pool's imports (Beam's harness and the pipeline's steps);
- the tokenizer's load (``load_tokenizer`` and the newline tables, timed inside);
- an empty Beam pipeline (``Create([1]) | Map(str)``), DirectRunner ``in_memory`` and
  ``multi_processing`` with ``--workers`` workers: the least any Beam run costs here;
- longctx on one small book (``--no-dedup``), ``in_memory`` and ``multi_processing``: the
  pipeline's own fixed cost, the encoder's work being ~0.1 s of it;
- ``import apache_beam`` in 7 processes at once (as a run's driver, pool server, head start
  and plot helper start together): whether the imports slow each other.

Results go to ``--results`` (JSON, with the machine, date and commit) and are printed as a
table. No timing here is asserted anywhere: this is measured by hand (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BOOKS, QWEN3, REPO, record, table  # noqa: E402

_EMPTY = """import sys
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
with beam.Pipeline(options=PipelineOptions(sys.argv[1:])) as p:
    p | beam.Create([1]) | beam.Map(str)
"""
_TOKENIZER = """import sys, time
t = time.perf_counter()
from transforms.samples.tokenize import load_tokenizer
tok = load_tokenizer(sys.argv[1] or None)  # none: the bundled Qwen3
t1 = time.perf_counter()
tok.newline_tables()
print(f"{t1 - t:.3f} {time.perf_counter() - t1:.3f}")
"""
_POOL_IMPORTS = "from apache_beam.runners.worker import sdk_worker_main; import pipeline.steps"


def _timed(cmd: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}")
    return wall, done.stdout.strip()


def _concurrent(cmd: list[str], env: dict, n: int) -> list[float]:
    """Each one's wall seconds, ``n`` copies of ``cmd`` started together."""
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL) for _ in range(n)]
    walls = [0.0] * n
    left = set(range(n))
    while left:
        for i in list(left):
            if procs[i].poll() is not None:
                walls[i] = time.perf_counter() - start
                left.discard(i)
        time.sleep(0.005)
    return walls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--tokenizer", default=str(QWEN3) if QWEN3.exists() else "")
    ap.add_argument("--books", default=str(BOOKS))
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks/results/startup.json")
    ap.add_argument("--copy-to", type=Path, help="also write the JSON here (a device's $OUT)")
    args = ap.parse_args()

    py = sys.executable
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    work = Path(tempfile.mkdtemp(prefix="longctx-startup-"))
    book_dir = work / "book"
    book_dir.mkdir()
    books = sorted(Path(args.books).glob("*.txt"), key=lambda p: p.stat().st_size)
    if not books:
        raise SystemExit(f"--books {args.books}: no .txt file")
    shutil.copy(books[0], book_dir / books[0].name)  # the smallest book
    tok_flag = ["--tokenizer", args.tokenizer] if args.tokenizer else []
    n = str(args.workers)
    mp = ["--direct_running_mode", "multi_processing", "--direct_num_workers", n]

    def longctx(*extra: str) -> list[str]:
        out = work / f"out-{time.monotonic_ns()}"
        return [
            py,
            "-m",
            "pipeline.run",
            "--runner",
            "DirectRunner",
            "--books",
            str(book_dir),
            *tok_flag,
            "--no-dedup",
            "--quiet",
            "--output",
            str(out),
            *extra,
        ]

    cases = {
        "python -c pass": lambda: [py, "-c", "pass"],
        "import apache_beam": lambda: [py, "-c", "import apache_beam"],
        "the worker pool's imports": lambda: [py, "-c", _POOL_IMPORTS],
        "the worker pool's imports, lean (pipeline/beam_import.py)": lambda: [
            py,
            "-c",
            "from pipeline.beam_import import import_beam; import_beam(); " + _POOL_IMPORTS,
        ],
        "empty Beam pipeline, in_memory": lambda: [py, "-c", _EMPTY, "--runner", "DirectRunner"],
        f"empty Beam pipeline, multi_processing N={n}": lambda: [
            py,
            "-c",
            _EMPTY,
            "--runner",
            "DirectRunner",
            *mp,
        ],
        "longctx, one small book, in_memory": lambda: longctx(),
        f"longctx, one small book, multi_processing N={n}": lambda: longctx(*mp),
    }
    # looked up, not imported: an import here would write the bytecode the first run measures
    spec = importlib.util.find_spec("apache_beam")
    beam_cached = bool(spec and spec.origin and (Path(spec.origin).parent / "__pycache__").is_dir())
    results: dict = {"cold": {}, "rounds": {k: [] for k in cases}}
    for name, make in cases.items():
        results["cold"][name] = round(_timed(make(), env)[0], 3)
        print(f"cold  {name}: {results['cold'][name]:.2f} s", flush=True)
    for r in range(args.rounds):
        for name, make in cases.items():
            wall = _timed(make(), env)[0]
            results["rounds"][name].append(round(wall, 3))
            print(f"round {r + 1} {name}: {wall:.2f} s", flush=True)
    loads = []
    for _ in range(args.rounds):
        out = _timed([py, "-c", _TOKENIZER, args.tokenizer], env)[1]
        loads.append([float(x) for x in out.split()[-2:]])
    together = [round(w, 3) for w in _concurrent([py, "-c", "import apache_beam"], env, 7)]
    shutil.rmtree(work, ignore_errors=True)

    rows = []
    for name in cases:
        walls = results["rounds"][name]
        rows.append(
            [
                name,
                f"{results['cold'][name]:.2f}",
                f"{statistics.median(walls):.2f}",
                f"{min(walls):.2f}-{max(walls):.2f}",
            ]
        )
    body = table(["command (whole process)", "first run s", "median s", "range s"], rows)
    body += (
        f"\n\n- Beam's bytecode cached before the first run: {beam_cached}."
        + "\n- Tokenizer load / newline tables, in-process: "
        + f"{', '.join(f'{a:.2f} / {b:.2f}' for a, b in loads)} s."
        + f"\n- `import apache_beam` in 7 processes at once: each ended at "
        f"{min(together):.2f}-{max(together):.2f} s."
    )
    data = {
        "rounds": results["rounds"],
        "cold": results["cold"],
        "beam_bytecode_cached": beam_cached,
        "tokenizer_load_tables_s": loads,
        "import_beam_7_together_s": together,
        "workers": args.workers,
    }
    cmd = f"python benchmarks/startup.py --rounds {args.rounds} --workers {args.workers}"
    record(
        "The start of a run against the floor of a Beam run",
        cmd,
        body,
        doc=False,
        json_path=args.results,
        data=data,
    )
    if args.copy_to:
        args.copy_to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(args.results, args.copy_to)


if __name__ == "__main__":
    main()
