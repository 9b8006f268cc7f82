"""Runner modes side by side on the benchmark corpus: DirectRunner in_memory and
multi_processing (1 and 2 workers), DaskRunner on a local cluster of 1 and 2 workers.

    python benchmarks/runners.py [--seq-len 65536]

Reports wall time, tokens/s and peak memory (the whole process tree, and the largest single
process; for Dask the scheduler and worker processes are included), and checks that every
mode wrote byte-identical shards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import QWEN3, REPO, corpus_args, record, run_measured, table  # noqa: E402


def _start_dask(workers: int, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.dask_cluster",
            "--workers",
            str(workers),
            "--port",
            str(port),
        ],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        if "Dask scheduler at" in line:
            return proc
    proc.kill()
    raise SystemExit("Dask cluster did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq-len", type=int, default=65536)
    args = ap.parse_args()
    base = [
        sys.executable,
        "-m",
        "pipeline.run",
        *corpus_args(),
        "--tokenizer",
        str(QWEN3),
        "--seq-len",
        str(args.seq_len),
    ]
    modes = [
        ("DirectRunner in_memory", ["--runner", "DirectRunner"], 0),
        (
            "DirectRunner multi_processing, 1 worker",
            [
                "--runner",
                "DirectRunner",
                "--direct_running_mode",
                "multi_processing",
                "--direct_num_workers",
                "1",
            ],
            0,
        ),
        (
            "DirectRunner multi_processing, 2 workers",
            [
                "--runner",
                "DirectRunner",
                "--direct_running_mode",
                "multi_processing",
                "--direct_num_workers",
                "2",
            ],
            0,
        ),
        ("DaskRunner, 1 worker", ["--runner", "DaskRunner"], 1),
        ("DaskRunner, 2 workers", ["--runner", "DaskRunner"], 2),
    ]
    rows, shas = [], {}
    tmp = Path(tempfile.mkdtemp(prefix="longctx-bench-"))
    try:
        for k, (name, flags, dask_workers) in enumerate(modes):
            out = tmp / f"out{k}"
            cluster = None
            extra: tuple[int, ...] = ()
            if dask_workers:
                port = 8790 + k
                cluster = _start_dask(dask_workers, port)
                flags = [*flags, f"--dask_client_address=127.0.0.1:{port}"]
                extra = (cluster.pid,)
            try:
                res = run_measured([*base, *flags, "--output", str(out)], extra_pids=extra)
            finally:
                if cluster:
                    cluster.terminate()
                    cluster.wait(timeout=60)
            m = json.loads((out / "manifest.json").read_text())
            tokens = m["counts"]["document_tokens"]
            shas[name] = [s["sha256"] for s in m["shards"]]
            rows.append(
                [
                    name,
                    f"{res['wall_s']:.1f}",
                    f"{tokens / res['wall_s']:,.0f}",
                    f"{res['peak_rss_mb']:,.0f}",
                    f"{res['peak_rss_each_mb'][0]:,.0f}",
                ]
            )
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    same = len({tuple(v) for v in shas.values()}) == 1
    body = table(
        ["mode", "wall s", "tokens/s", "peak RSS, all processes (MB)", "largest process (MB)"],
        rows,
    )
    body += f"\n\n{tokens:,} tokens; shards byte-identical across modes: {'yes' if same else 'NO'}."
    record(
        f"Runner modes, --seq-len {args.seq_len}",
        f"python benchmarks/runners.py --seq-len {args.seq_len}",
        body,
    )


if __name__ == "__main__":
    main()
