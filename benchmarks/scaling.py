"""Scaling: over worker counts (parallel scaling), and over corpus size (memory flatness).

Parallel scaling (the default), one command::

    python benchmarks/scaling.py [--workers 1,2,4,8,16] [--corpus-mb 300] [--seq-len 65536]
        [--modes ceiling,in_memory,phases,multi_processing,multi_processing_rayon,dask]
        [--budget-s 540] [--fresh] [--results benchmarks/results/scaling_workers.json]

Rows (each measured on the same corpus and tokenizer):

- ``ceiling``: the tokenizer alone over N processes (multiprocessing, fork): each loads
  ``tokenizer.json`` with the ``tokenizers`` library and runs ``encode_batch_fast`` on its share
  of the corpus's document texts, cut into ~64 KB chunks at line breaks as
  ``benchmarks/throughput.py``'s ceiling does (shares balanced by characters; 256 chunks a
  call). Timed as a whole, from a barrier that all N pass once loaded until the last one ends
  (loading and reading excluded). The Rust tokenizer runs a rayon pool over every core in each
  process, so with N processes on C cores each gets ``RAYON_NUM_THREADS=max(1, C//N)``; the
  ``ceiling_oversubscribed`` row (``--modes``) leaves it unset (N x C threads) for comparison;
  the ``ceiling_shared`` row loads the tokenizer once, before the N processes fork, so they
  share its memory as DirectRunner's pooled workers do (the worker pool's server loads it and
  forks them; a Dask worker, spawned, loads its own); the ``ceiling_dask`` row runs the same
  shares as N tasks on a fresh local cluster of N one-thread workers
  (``python -m pipeline.dask_cluster``), one task a worker, each worker's tokenizer loaded and
  its share sent before the clock starts: the tokenizer alone inside Dask's workers, to tell
  the DaskRunner's own cost from the workers'.
- ``in_memory``: ``python -m pipeline.run --runner DirectRunner``, one process: the reference.
- ``phases``: the same run in one process with its stages timed (read, encode, scores, token
  store, plan, cut, shard and table writes, Beam's own time, prepare, finalize), so the
  single-process stages can be weighed against the per-document ones.
- ``multi_processing``: ``--direct_running_mode multi_processing --direct_num_workers N``, as
  the pipeline runs today (each worker's tokenizer starts C rayon threads: N x C threads).
- ``multi_processing_rayon``: the same with ``RAYON_NUM_THREADS=max(1, C//N)`` set in the
  environment by this benchmark (a labelled extra row; N >= 2).
- ``dask``: ``--runner DaskRunner`` on a local cluster of N worker processes
  (``python -m pipeline.dask_cluster``; its start is not timed, its processes' memory counts);
  ``dask_rayon`` with ``RAYON_NUM_THREADS=max(1, C//N)`` in the cluster (not in the default
  list).

Per row: wall seconds, tokens/s, efficiency (tokens/s over the ceiling's at the same N), speed-up
over the same mode at N=1, CPU seconds of all its processes over wall (cores busy), peak RSS of
the whole process tree and of the largest process (sampled every 0.1 s; the pipeline's own
helpers and, for Dask, the scheduler, nannies and workers included).

Corpus (``benchmarks/scaling_corpus.py``): the shared books and the standard-library packages of
``benchmarks/common.py`` replicated under distinct names up to ``--corpus-mb`` of input files
(distinct paths, so distinct document ids). The copies are identical by design, so duplicate
removal would drop them: every pipeline row runs with ``--no-dedup``, to measure the same work
scaled (``SCALING_DEDUP=1`` in the environment: with it on, for an A/B of the default path). ``--extra-repos DIR`` adds registry packages already on disk (folders or archives).

Results: each row is written to ``--results`` (JSON) as soon as it finishes, with the table
so far; a rerun skips finished rows (same configuration: corpus, sizes, machine) unless
``--fresh``, so a run can be split over several calls (``--budget-s``: stop before a row that
would not fit, and never run past it). The table is printed as markdown with machine, date,
commit and command. ``benchmarks/scaling.sh`` runs it on the GPU machine's CPUs.

Memory flatness over corpus size (the earlier mode of this script)::

    python benchmarks/scaling.py --factors 1,4,16 [--factor-mode in_memory|multi_processing|dask]
        [--factor-workers 2]

runs the base corpus at 1x, 4x, 16x (whole copies, ``--no-dedup``) and reports wall time, time
per token and peak RSS against 1x, to ``benchmarks/results/scaling_factors.json`` and stdout.
``--doc`` also appends either table to ``docs/benchmarks.md``, as the other benchmarks do.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import heapq
import importlib.util
import json
import lzma
import os
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    BOOKS,
    QWEN3,
    REPO,
    commit,
    machine,
    record,
    table,
    write_json_atomic,
)
from benchmarks.scaling_corpus import base_units, materialize, plan, unit_texts  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
DEFAULT_MODES = "ceiling,in_memory,phases,multi_processing,multi_processing_rayon,dask"
ALL_MODES = (
    "ceiling",
    "ceiling_oversubscribed",
    "ceiling_shared",
    "ceiling_dask",
    "in_memory",
    "phases",
    "multi_processing",
    "multi_processing_rayon",
    "dask",
    "dask_rayon",
)
SINGLE = ("in_memory", "phases")  # one process: run at N=1 only
BASE = {  # the N=1 row a mode's speed-up is taken against
    "ceiling": "ceiling",
    "ceiling_oversubscribed": "ceiling",
    "ceiling_shared": "ceiling",
    "ceiling_dask": "ceiling",
    "in_memory": "in_memory",
    "multi_processing": "multi_processing",
    "multi_processing_rayon": "multi_processing",
    "dask": "dask",
    "dask_rayon": "dask",
}
# chunks per encode_batch_fast call (~16 MB of text); SCALING_CEILING_BATCH=64 in the environment:
# the pipeline's own (transforms.samples.tokenize.ENCODE_GROUP)
CEILING_BATCH = int(os.environ.get("SCALING_CEILING_BATCH", "256"))


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def rayon_for(n: int) -> int:
    return max(1, cores() // n)


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- measuring a process tree ----------------------------------------------------------------


class TreeSampler:
    """Every 0.1 s, the processes under ``roots``: peak RSS of the whole tree and of each
    process, CPU seconds per process (less what it had spent at :meth:`mark_baseline`), and the
    most threads seen in each; also when the tree's peak came (seconds after the sampling
    began) and what made it up then (MB and processes by command, :func:`_kind`)."""

    def __init__(self, roots: list[int], interval: float = 0.1):
        import psutil

        self.psutil = psutil
        self.roots = []
        for pid in roots:
            with contextlib.suppress(psutil.Error):
                self.roots.append(psutil.Process(pid))
        self.interval = interval
        self.peak_total = 0
        self.peak_at = 0.0
        self.peak_parts: dict[str, list] = {}
        self.started = time.monotonic()
        self.info: dict[int, dict] = {}
        self.baseline: dict[int, float] = {}
        self.baseline_sys: dict[int, float] = {}
        self.busy: list[tuple[float, float, float]] = []  # (t, machine's busy CPU s, tree's)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _procs(self):
        out = []
        for r in self.roots:
            with contextlib.suppress(self.psutil.Error):
                out += [r, *r.children(recursive=True)]
        return out

    def _sample(self) -> None:
        total = 0
        parts: dict[str, list] = {}
        for p in self._procs():
            try:
                with p.oneshot():
                    rss = p.memory_info().rss
                    t = p.cpu_times()
                    threads = p.num_threads()
                    new = p.pid not in self.info
                    cmd = " ".join(p.cmdline()) if new else ""
                    rayon = p.environ().get("RAYON_NUM_THREADS", "unset") if new else ""
            except self.psutil.Error:
                continue
            total += rss
            with self._lock:
                i = self.info.setdefault(
                    p.pid,
                    {"pid": p.pid, "cmd": _short_cmd(cmd), "rss": 0, "threads": 0, "env": rayon},
                )
                i["rss"] = max(i["rss"], rss)
                i["cpu"] = t.user + t.system
                i["sys"] = t.system
                i["threads"] = max(i["threads"], threads)
                part = parts.setdefault(_kind(i["cmd"]), [0, 0])
                part[0] += 1
                part[1] += rss
        if total > self.peak_total:
            self.peak_total, self.peak_at = total, time.monotonic() - self.started
            self.peak_parts = parts
        with self._lock:  # the tree's CPU: every process seen, at its last sample
            tree = sum(i.get("cpu", 0.0) for i in self.info.values())
        self.busy.append((time.monotonic() - self.started, _busy_s(), tree))

    def busy_timeline(self, step: float = 0.5) -> dict:
        """Cores busy between samples about ``step`` seconds apart, from the sampling's start:
        ``[end s, the whole machine's (every process, exited ones included), the tree's (a
        process that exited between two samples loses its last interval)]``."""
        rows, prev = [], self.busy[0] if self.busy else None
        for t, b, c in self.busy[1:]:
            if t - prev[0] >= step * 0.95:
                dt = t - prev[0]
                rows.append(
                    [round(t, 2), round((b - prev[1]) / dt, 1), round((c - prev[2]) / dt, 1)]
                )
                prev = (t, b, c)
        return {"columns": ["end_s", "machine_cores", "tree_cores"], "rows": rows}

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def mark_baseline(self) -> None:
        """From now on: CPU seconds already spent by the processes alive now do not count."""
        self._sample()
        with self._lock:
            self.baseline = {pid: i.get("cpu", 0.0) for pid, i in self.info.items()}
            self.baseline_sys = {pid: i.get("sys", 0.0) for pid, i in self.info.items()}

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        procs = []
        for i in sorted(self.info.values(), key=lambda i: -i.get("cpu", 0.0)):
            procs.append(
                {
                    "pid": i["pid"],
                    "cmd": i["cmd"],
                    "cpu_s": round(i.get("cpu", 0.0) - self.baseline.get(i["pid"], 0.0), 2),
                    # of cpu_s: in the kernel
                    "system_s": round(i.get("sys", 0.0) - self.baseline_sys.get(i["pid"], 0.0), 2),
                    "rss_mb": round(i["rss"] / 2**20, 1),
                    "threads": i["threads"],
                    "RAYON_NUM_THREADS": i["env"],  # as the process started (environment)
                }
            )
        return {
            "peak_rss_mb": round(self.peak_total / 2**20, 1),
            # of cpu_s, in the kernel (page faults, I/O, ...)
            "system_cpu_s": round(sum(p["system_s"] for p in procs), 1),
            "peak_at_s": round(self.peak_at, 1),
            "peak_parts": {
                kind: {"processes": n, "rss_mb": round(rss / 2**20, 1)}
                for kind, (n, rss) in sorted(self.peak_parts.items(), key=lambda kv: -kv[1][1])
            },
            "largest_process_mb": max((i["rss_mb"] for i in procs), default=0.0),
            "processes": len(procs),
            "max_threads_per_process": max((i["threads"] for i in procs), default=0),
            "busy_timeline": self.busy_timeline(),
            "per_process": procs,
        }


def _kind(cmd: str) -> str:
    """What a process is, for the peak's parts: the module a ``python -m`` runs, else its
    short command (``pipeline driver``, ``beam sdk worker``, ...)."""
    words = cmd.split()
    if "-m" in words[:-1]:
        return words[words.index("-m") + 1]
    return cmd[:40]


def _short_cmd(cmd: str) -> str:
    for key, label in (
        ("sdk_worker_main", "beam sdk worker"),
        ("pipeline.dask_cluster", "dask cluster"),
        ("--phase-child", "pipeline driver (phases)"),
        ("pipeline.run", "pipeline driver"),
        ("multiprocessing", "python multiprocessing child"),
    ):
        if key in cmd:
            return label
    return cmd[:80]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all processes, everyone's)."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def wait_idle(max_s: float, cores_busy: float = 0.3) -> tuple[float, float]:
    """Wait (up to ``max_s``) until the machine's other work uses under ``cores_busy`` cores
    over 2 s; (seconds waited, cores busy at the end)."""
    start = time.time()
    while True:
        b0 = _busy_s()
        time.sleep(2.0)
        load = (_busy_s() - b0) / 2.0
        if load < cores_busy or time.time() - start >= max_s:
            return time.time() - start, load


class RowTimeout(Exception):
    """A row ran out of the time it was given."""


def run_tree(cmd: list[str], env: dict, log: Path, timeout: float | None, extra=()) -> dict:
    """Run ``cmd`` in its own process group, output to ``log``: exit status, wall seconds,
    CPU seconds (its reaped tree exactly, plus what the ``extra`` trees, a Dask cluster, spent
    meanwhile), memory of both."""
    cpu0 = _children_cpu()
    with open(log, "w") as fh, TreeSampler(list(extra)) as mem:
        mem.mark_baseline()
        busy0 = _busy_s()
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        mem.roots.append(mem.psutil.Process(proc.pid))
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RowTimeout(f"stopped after {timeout:.0f} s") from None
        wall = time.perf_counter() - start
        busy = _busy_s() - busy0
    cpu = _children_cpu() - cpu0
    s = mem.summary()
    extra_cpu = sum(i["cpu_s"] for i in s["per_process"] if i["pid"] in mem.baseline)
    cpu += extra_cpu
    return {
        "rc": rc,
        "wall_s": wall,
        "cpu_s": round(cpu, 1),
        "other_cpu_s": round(max(0.0, busy - cpu), 1),  # other people's work meanwhile
        **s,
    }


# --- the tokenizer ceiling -------------------------------------------------------------------

_CHUNKS: list[str] = []  # the corpus's chunks, set before the ceiling's processes are forked
_SHARED: list = []  # ceiling_shared: the tokenizer, loaded before they are forked


def _ceiling_proc(rank, share, tokenizer_json, rayon, barrier, queue) -> None:
    # before the tokenizer's first parallel call, which sizes its rayon pool
    if rayon:
        os.environ["RAYON_NUM_THREADS"] = str(rayon)
    else:
        os.environ.pop("RAYON_NUM_THREADS", None)
    import psutil
    from tokenizers import Tokenizer

    tok = _SHARED[0] if _SHARED else Tokenizer.from_file(tokenizer_json)
    chunks = [_CHUNKS[i] for i in share]
    barrier.wait()
    start = time.perf_counter()
    n = _encode_chunks(tok, chunks)
    queue.put((rank, n, time.perf_counter() - start, psutil.Process().num_threads()))


def _encode_chunks(tok, chunks: list[str]) -> int:
    """The ceiling's work: ``chunks`` encoded ``CEILING_BATCH`` a call; the tokens."""
    n = 0
    for i in range(0, len(chunks), CEILING_BATCH):
        enc = tok.encode_batch_fast(chunks[i : i + CEILING_BATCH], add_special_tokens=False)
        n += sum(len(e.ids) for e in enc)
    return n


def _ceiling_result(wall, busy, mem, tokens, encode_s, threads, **extra) -> dict:
    """A ceiling row: its wall time, tokens and encode seconds, with ``mem``'s (a
    ``TreeSampler``'s) CPU and memory; ``busy``: the machine's busy CPU-s meanwhile."""
    s = mem.summary()
    cpu = sum(i["cpu_s"] for i in s["per_process"])
    return {
        "rc": 0,
        "wall_s": wall,
        "tokens": tokens,
        "cpu_s": round(cpu, 1),
        "other_cpu_s": round(max(0.0, busy - cpu), 1),
        "per_process_encode_s": sorted(round(x, 2) for x in encode_s),
        **extra,
        "threads_per_process": sorted(set(threads)),
        "chunks_per_call": CEILING_BATCH,
        **s,
    }


def _load_here(tokenizer_json: str, dask_worker=None) -> None:
    """On a Dask worker (``Client.run``): its tokenizer, kept on the worker for
    ``_encode_share`` (not timed; these functions travel by value, as this script runs as
    __main__, so not in a global)."""
    from tokenizers import Tokenizer

    dask_worker.longctx_ceiling_tokenizer = Tokenizer.from_file(tokenizer_json)


def _encode_share(chunks: list[str]) -> tuple:
    """On a Dask worker: ``_ceiling_proc``'s encode loop over its share; (tokens, encode s,
    this process's user and system CPU-s over it, threads)."""
    import psutil
    from distributed import get_worker

    tok, me = get_worker().longctx_ceiling_tokenizer, psutil.Process()
    before = me.cpu_times()
    start = time.perf_counter()
    n = _encode_chunks(tok, chunks)
    spent = time.perf_counter() - start
    after = me.cpu_times()
    return n, spent, after.user - before.user, after.system - before.system, me.num_threads()


def run_ceiling_dask(n: int, tokenizer_json: str, work: Path, timeout: float | None) -> dict:
    """The ceiling's shares as ``n`` tasks on a fresh ``pipeline.dask_cluster`` of ``n``
    workers (its settings, its ``RAYON_NUM_THREADS``), one a worker; timed from the submit to
    the last result, the tokenizer loaded and the shares on the workers before."""
    if importlib.util.find_spec("distributed") is None:
        raise RuntimeError("skipped: dask.distributed is not installed")
    from distributed import Client

    env = pipeline_env(None)
    cluster, address = start_dask(n, env, work / "dask.log")
    try:
        with Client(address, set_as_default=False) as client:
            client.wait_for_workers(n, timeout=120)
            workers = sorted(client.scheduler_info()["workers"])[:n]
            client.run(_load_here, tokenizer_json, workers=workers)
            shares = split_shares([len(c) for c in _CHUNKS], n)
            data = [
                client.scatter([_CHUNKS[i] for i in share], workers=[w], broadcast=False)
                for share, w in zip(shares, workers, strict=True)
            ]
            with TreeSampler([cluster.pid]) as mem:
                mem.mark_baseline()  # the cluster's start, the loads and the scatter excluded
                start = time.perf_counter()
                busy0 = _busy_s()
                futures = [
                    client.submit(
                        _encode_share, d, workers=[w], allow_other_workers=False, pure=False
                    )  # fmt: skip
                    for d, w in zip(data, workers, strict=True)
                ]
                end = None if timeout is None else start + timeout
                try:
                    results = [
                        f.result(
                            timeout=None if end is None else max(0.1, end - time.perf_counter())
                        )
                        for f in futures
                    ]
                except TimeoutError:  # distributed's TimeoutError is the builtin one
                    raise RowTimeout("ceiling_dask stopped: out of time") from None
                wall = time.perf_counter() - start
                busy = _busy_s() - busy0
    finally:
        stop_dask(cluster)
    return _ceiling_result(
        wall, busy, mem, sum(r[0] for r in results), [r[1] for r in results],
        [r[4] for r in results],
        per_task_user_system_s=sorted((round(r[2], 2), round(r[3], 2)) for r in results),
    )  # fmt: skip


def split_shares(lengths: list[int], n: int) -> list[list[int]]:
    """Chunk indices in ``n`` shares of nearly equal characters (longest chunk first, each to
    the lightest share so far)."""
    heap = [(0, k) for k in range(n)]
    shares: list[list[int]] = [[] for _ in range(n)]
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        load, k = heapq.heappop(heap)
        shares[k].append(i)
        heapq.heappush(heap, (load + lengths[i], k))
    return [sorted(s) for s in shares]


def run_ceiling(
    n: int, rayon: int | None, tokenizer_json: str, timeout: float | None, shared: bool = False
) -> dict:
    import multiprocessing as mp

    if shared:  # loading uses no thread pool: the children's own pools start as they encode
        from tokenizers import Tokenizer

        _SHARED[:] = [Tokenizer.from_file(tokenizer_json)]
    ctx = mp.get_context("fork")  # the children share _CHUNKS with this process
    shares = split_shares([len(c) for c in _CHUNKS], n)
    barrier, queue = ctx.Barrier(n + 1), ctx.Queue()
    procs = [
        ctx.Process(
            target=_ceiling_proc, args=(k, shares[k], tokenizer_json, rayon, barrier, queue)
        )
        for k in range(n)
    ]
    for p in procs:
        p.start()
    try:
        with TreeSampler([p.pid for p in procs]) as mem:
            barrier.wait(timeout=timeout)
            start = time.perf_counter()
            busy0 = _busy_s()
            mem.mark_baseline()  # loading the tokenizer is not the ceiling's work
            results = [queue.get(timeout=timeout) for _ in range(n)]
            wall = time.perf_counter() - start
            busy = _busy_s() - busy0
    except BaseException as err:
        for p in procs:
            with contextlib.suppress(Exception):
                p.kill()
        raise RowTimeout(f"ceiling stopped: {type(err).__name__} {err}") from None
    finally:
        _SHARED.clear()  # a later plain ceiling row loads its own
    for p in procs:
        p.join()
    return _ceiling_result(
        wall, busy, mem, sum(r[1] for r in results), [r[2] for r in results],
        [r[3] for r in results],
    )  # fmt: skip


def load_chunks(units, entries) -> dict:
    """Fill ``_CHUNKS``: the corpus's document texts cut into ~64 KB chunks (each distinct
    unit read and cut once; its copies reuse the same strings)."""
    from transforms.samples.tokenize import chunk_text

    t = time.perf_counter()
    texts = unit_texts(units)
    by_unit = {u.name + u.kind: chunk_text(texts[f"{u.kind}:{u.name}"]) for u in units}
    _CHUNKS.clear()
    for u, _ in entries:
        _CHUNKS.extend(by_unit[u.name + u.kind])
    return {
        "ceiling_read_s": round(time.perf_counter() - t, 1),
        "ceiling_chars": sum(map(len, _CHUNKS)),
        "ceiling_chunks": len(_CHUNKS),
    }


# --- the pipeline ----------------------------------------------------------------------------


def pipeline_env(rayon: int | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("RAYON_NUM_THREADS", None)
    if rayon:
        env["RAYON_NUM_THREADS"] = str(rayon)
    return env


def pipeline_args(corpus: Path, tokenizer: str, seq_len: int, out: Path) -> list[str]:
    return [
        "--books",
        str(corpus / "books"),
        "--repos-root",
        str(corpus / "repos"),
        "--tokenizer",
        tokenizer,
        "--seq-len",
        str(seq_len),
        "--output",
        str(out),
        *([] if dedup_on() else ["--no-dedup"]),
    ]


def dedup_on() -> bool:
    """``SCALING_DEDUP=1``: the pipeline rows run with duplicate removal on (``pipeline.run``'s
    default). The corpus's copies are then dropped as duplicates, so such a row measures the
    default path's cost (signatures, bands, the join), not the same work scaled: its
    efficiency is not comparable with the ceiling's."""
    return os.environ.get("SCALING_DEDUP", "") not in ("", "0")


def runner_flags(mode: str, n: int) -> list[str]:
    if mode.startswith("multi_processing"):
        return [
            "--runner",
            "DirectRunner",
            "--direct_running_mode",
            "multi_processing",
            "--direct_num_workers",
            str(n),
        ]
    if mode.startswith("dask"):
        return ["--runner", "DaskRunner"]
    return ["--runner", "DirectRunner"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dask(n: int, env: dict, log: Path, timeout: float = 180):
    """``python -m pipeline.dask_cluster --workers n`` (its own process group, output to
    ``log``): the process and the scheduler's address."""
    port = _free_port()
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.dask_cluster",
                "--workers",
                str(n),
                "--port",
                str(port),
            ],
            cwd=REPO,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.time() + timeout
    while time.time() < deadline:
        if "Dask scheduler at" in log.read_text(errors="replace"):
            return proc, f"127.0.0.1:{port}"
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    stop_dask(proc)
    raise RuntimeError(f"Dask cluster did not start: {log.read_text(errors='replace')[-2000:]}")


def stop_dask(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


TIMELINE_SITE = REPO / "benchmarks" / "timeline"


def _span(values) -> list:
    """``[first, last]`` of some times."""
    values = list(values)
    return [min(values), max(values)]


def worker_timeline(folder: Path, t0: float, wall: float) -> dict:
    """What ``benchmarks/timeline/sitecustomize.py`` recorded in each process: per process, the
    seconds in each DoFn method and its first start / last end (seconds from the run's start),
    and where the run's time went around the fused read + tokenize stage: ``startup_s`` (to
    the first read), ``stage_end_spread_s`` (the first worker to finish it against the last:
    the imbalance), ``after_stage_s`` (from its last end to the run's end: plan, cut, shards,
    manifest, report)."""
    procs = []
    for f in sorted(folder.glob("*.json")):
        if f.name.endswith(".stacks.json"):  # benchmarks/stacks.py's samples
            continue
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(f.read_text())
            procs.append(
                {
                    name: {
                        "s": round(v[0], 2),
                        "calls": v[1],
                        "first": round(v[2] - t0, 2),
                        "last": round(v[3] - t0, 2),
                    }
                    for name, v in sorted(data.items())
                }
            )
    drivers = [p for p in procs if any(k.startswith("stage:") for k in p)]
    if drivers:  # the driver's stages in the order they ran, and pipeline.job's parts
        d = drivers[0]
        out_driver = sorted(
            ([k, v["first"], v["last"], v["s"], v["calls"]] for k, v in d.items()
             if k.startswith(("stage:", "job."))),
            key=lambda row: row[1],
        )  # fmt: skip
    helpers = [  # the head start's helpers: sources read outside the read step
        p["discover.read_source"]
        for p in procs
        if "discover.read_source" in p
        and "ReadSourceFn.process" not in p
        and "head_start.work_on" not in p  # a Dask worker's head-start tasks (below)
    ]
    checks = [p["tokenizer.check"] for p in procs if "tokenizer.check" in p]
    head = {}
    if checks:  # the head start's (or the probe's) tokenizer loaded
        head["tokenizer_checked_s"] = min(c["last"] for c in checks)
    if helpers:  # its helpers: when they began tokenizing, and ended
        head["helpers"] = len(helpers)
        head["helpers_began_s"] = _span(h["first"] for h in helpers)
        head["helpers_last_read_s"] = _span(h["last"] for h in helpers)
    # a Dask cluster's workers doing the head start (pipeline.head_start): their whole tasks
    # (a worker's first loads the tokenizer), else what older timelines had
    on_workers = [
        p.get("head_start.task") or p["head_start.work_on"]
        for p in procs
        if "head_start.work_on" in p or "head_start.task" in p
    ]
    if on_workers:
        head["worker_tasks"] = sum(w["calls"] for w in on_workers)
        head["worker_tasks_s"] = round(sum(w["s"] for w in on_workers), 2)
        head["worker_tasks_began_s"] = _span(w["first"] for w in on_workers)
        head["worker_tasks_ended_s"] = _span(w["last"] for w in on_workers)
    both = [p for p in procs if "TokenizeFn.process" in p and "ReadSourceFn.process" in p]
    tok = [p["TokenizeFn.process"] for p in both]  # the fused stage's workers, pairwise
    reads = [p["ReadSourceFn.process"] for p in both]
    out: dict = {"processes": procs}
    if head:
        out["head_start"] = head
    if drivers:
        out["driver"] = out_driver
    if both:
        ends = [t["last"] for t in tok]
        started = [p["process.start"]["first"] for p in both if "process.start" in p]
        imported = [p["process.imported"]["first"] for p in both if "process.imported" in p]
        setups = [
            max(v["last"] for k, v in p.items() if k.endswith(".setup"))
            for p in both
            if any(k.endswith(".setup") for k in p)
        ]
        harness = [p["harness.main"]["first"] for p in both if "harness.main" in p]
        serving = [p["harness.run"]["first"] for p in both if "harness.run" in p]
        if harness and serving:  # a worker's harness: begun (after the fork), serving
            out.update(
                workers_harness_s=_span(harness),
                workers_serving_s=_span(serving),
            )
        if started and imported:  # the start divided: workers launched, imported, set up
            out.update(
                workers_started_s=_span(started),
                workers_imported_s=_span(imported),
                workers_set_up_s=_span(setups) if setups else None,
            )
        out.update(
            startup_s=min(r["first"] for r in reads),
            stage_end_first_s=min(ends),
            stage_end_last_s=max(ends),
            stage_end_spread_s=round(max(ends) - min(ends), 2),
            after_stage_s=round(wall - max(ends), 2),
            read_s_per_worker=[r["s"] for r in reads],
            tokenize_s_per_worker=[t["s"] for t in tok],
        )
    return out


def run_pipeline(mode: str, n: int, corpus: Path, tokenizer: str, seq_len: int, work: Path,
                 timeout: float | None) -> dict:  # fmt: skip
    rayon = rayon_for(n) if mode.endswith("_rayon") else None
    if os.environ.get("SCALING_RAYON_THREADS") and mode.startswith("multi_processing"):
        rayon = int(os.environ["SCALING_RAYON_THREADS"])  # an A/B of the pipeline's C//N
    env = pipeline_env(rayon)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    args = pipeline_args(corpus, tokenizer, seq_len, out) + runner_flags(mode, n)
    shown = ["python", "-m", "pipeline.run", *args]
    if mode == "phases":
        cmd = [sys.executable, __file__, "--phase-child", str(work / "phases.json"), "--", *args]
    else:
        cmd = [sys.executable, "-m", "pipeline.run", *args]
    timeline = work / "timeline"
    if mode.startswith(("multi_processing", "dask")):  # each worker's time in the pipeline's DoFns
        shutil.rmtree(timeline, ignore_errors=True)
        timeline.mkdir(parents=True)
        env["PYTHONPATH"] = os.pathsep.join((str(TIMELINE_SITE), env["PYTHONPATH"]))
        env["BEAM_TIMELINE_DIR"] = str(timeline)  # a Dask cluster's processes inherit it
    cluster, extra, cluster_s = None, (), None
    if mode.startswith("dask"):
        if importlib.util.find_spec("distributed") is None:
            raise RuntimeError("skipped: dask.distributed is not installed")
        t = time.perf_counter()
        cluster, address = start_dask(n, env, work / "dask.log")
        cluster_s = round(time.perf_counter() - t, 1)
        cmd.append(f"--dask_client_address={address}")
        shown = [*shown, "--dask_client_address=HOST:PORT"]
        extra = (cluster.pid,)
    t0 = time.time()
    try:
        res = run_tree(cmd, env, work / "pipeline.log", timeout, extra)
    finally:
        if cluster:
            stop_dask(cluster)
    if mode.startswith(("multi_processing", "dask")):
        res["workers_timeline"] = worker_timeline(timeline, t0, res["wall_s"])
    if res["rc"] != 0:
        tail = (work / "pipeline.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"exit {res['rc']}: {tail}")
    m = json.loads((out / "manifest.json").read_text())
    c = m["counts"]
    res.update(
        tokens=c["document_tokens"],
        documents=c["documents"],
        samples=c["samples"],
        shards=c["shards"],
        command=shlex.join(([f"RAYON_NUM_THREADS={rayon}"] if rayon else []) + shown),
    )
    if cluster_s is not None:
        res["dask_cluster_start_s"] = cluster_s
    if mode == "phases":
        res["phases"] = json.loads((work / "phases.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return res


# --- the phases of one in-process run ---------------------------------------------------------

_T: dict[str, float] = {}
_N: dict[str, int] = {}


def _add(name: str, dt: float, calls: int = 1) -> None:
    _T[name] = _T.get(name, 0.0) + dt
    _N[name] = _N.get(name, 0) + calls


# The wrappers below are pickled by value when Beam pickles a function (beam.Map(fn)); they
# reach the totals through ``_add`` of the imported module ``benchmarks.scaling`` (pickled by
# reference), never through this file run as ``__main__``.


def _timed(name, fn):
    """Time every call; calls from the read step's early-tokenization thread
    (``pipeline/steps/early.py``) count under ``early:<name>`` (they overlap the read step)."""

    def wrapper(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            early = threading.current_thread().name.startswith("longctx-early")
            _add(f"early:{name}" if early else name, time.perf_counter() - t)

    wrapper.__wrapped__ = fn
    return wrapper


def _timed_process(name, fn):
    """A DoFn's ``process(self, element)``: the time spent producing its outputs."""

    def process(self, element):
        t = time.perf_counter()
        it = iter(fn(self, element) or ())
        while True:
            try:
                item = next(it)
            except StopIteration:
                _add(name, time.perf_counter() - t)
                return
            _add(name, time.perf_counter() - t, calls=0)
            yield item
            t = time.perf_counter()

    return process


def _timed_finish(name, fn):
    """A DoFn's ``finish_bundle(self)`` (the tokenize step's last batch): counted with its
    ``process`` time."""
    return lambda self: _timed_process(name, lambda self, _: fn(self))(self, None)


def _patch(modules, attr: str, name: str, wrap=_timed) -> bool:
    """Replace ``attr`` in every module of ``modules`` that holds the same object."""
    originals = [getattr(m, attr) for m in modules if hasattr(m, attr)]
    if not originals:
        return False
    fn = originals[0]
    new = wrap(name, fn)
    for m in modules:
        if getattr(m, attr, None) is fn:
            setattr(m, attr, new)
    return True


PHASES = [  # (label, runs as)
    ("python start and imports", "once per run (driver)"),
    ("prepare: flags, tokenizer, discovery", "once per run (driver)"),
    ("read sources", "per document (all workers)"),
    ("encode: tokenizer and id arrays", "per document (all workers; rayon threads inside)"),
    ("windows", "per document (all workers)"),
    ("dependency scores", "per document (all workers)"),
    ("token store writes", "per document (all workers)"),
    ("tokenize step, other", "per document (all workers)"),
    ("plan: whole-corpus packing", "once, in one process"),
    ("cut segments", "per batch of documents (all workers)"),
    ("write shards", "per shard (parallel up to the shard count)"),
    ("write documents.arrow and rejects", "once, in one process"),
    ("Beam: graph, runner, shuffles", "mostly the runner's own (driver)"),
    ("finalize: manifest, report, publish", "once per run (driver)"),
    ("exit", "once per run (driver)"),
]
EARLY = "early tokenization (read step's thread; overlaps reading, not in the total)"
PHASES.append((EARLY, "per document of >= 64K characters"))


def phase_child(out_json: str, argv: list[str]) -> int:
    """Run the pipeline in this process (in_memory) with its stages timed; write the times."""
    if __name__ == "__main__":  # the timing state must live in an importable module
        from benchmarks import scaling

        return scaling.phase_child(out_json, argv)
    import psutil

    created = psutil.Process().create_time()
    import pipeline.run as prun
    import pipeline.steps.plan as planm
    import pipeline.steps.read as readm
    import pipeline.steps.tokenize as tokm
    import pipeline.steps.write as writem
    import pipeline.token_store as store
    import transforms.samples.tokenize as ttok

    job = []
    if importlib.util.find_spec("pipeline.job") is not None:
        import pipeline.job as jobm

        job = [jobm]
    drivers = [*job, prun]
    patched = {
        "prepare": _patch(drivers, "prepare", "prepare"),
        "execute": _patch(drivers, "execute", "execute"),
        "finalize": _patch(drivers, "finalize", "finalize"),
        "read": _patch([readm.ReadSourceFn], "process", "read", _timed_process),
        "tokenize": _patch([tokm.TokenizeFn], "process", "tokenize", _timed_process),
        "tokenize_finish": _patch([tokm.TokenizeFn], "finish_bundle", "tokenize", _timed_finish),
        "encode": _patch([ttok], "encode_documents_full", "encode"),
        "windows": _patch([ttok], "window_document", "windows"),
        "scores": _patch([tokm], "dependency_score", "scores"),
        "store": _patch([store], "store", "store"),
        "plan": _patch([planm], "plan_samples", "plan"),
        "cut": _patch([planm.CutSegmentsFn], "process", "cut", _timed_process),
        "shards": _patch([writem.WriteShardFn], "process", "shards", _timed_process),
        "shard_scores": _patch([writem], "dependency_score", "shard_scores"),
        # the whole-corpus files (documents.arrow, rejects.jsonl, shard stats, plan summary)
        "documents": _patch([writem], "write_run_files", "documents"),
    }
    t_run = time.time()
    rc = prun.run(argv)
    end = time.time()
    T = _T.get
    inside = sum(
        T(k, 0.0) for k in ("read", "tokenize", "plan", "cut", "shards", "documents", "rejects")
    )
    tok_known = sum(T(k, 0.0) for k in ("encode", "windows", "scores", "store"))
    seconds = {
        "python start and imports": t_run - created,
        "prepare: flags, tokenizer, discovery": T("prepare", 0.0),
        "read sources": T("read", 0.0),
        "encode: tokenizer and id arrays": T("encode", 0.0),
        "windows": T("windows", 0.0),
        "dependency scores": T("scores", 0.0),
        "token store writes": T("store", 0.0),
        "tokenize step, other": T("tokenize", 0.0) - tok_known,
        "plan: whole-corpus packing": T("plan", 0.0),
        "cut segments": T("cut", 0.0),
        "write shards": T("shards", 0.0),
        "write documents.arrow and rejects": T("documents", 0.0) + T("rejects", 0.0),
        "Beam: graph, runner, shuffles": T("execute", 0.0) - inside,
        "finalize: manifest, report, publish": T("finalize", 0.0),
    }
    seconds["exit"] = max(0.0, (end - created) - sum(seconds.values()))
    # in a thread of the read step, so inside "read sources" wall time: not added to the total
    seconds[EARLY] = sum(T(f"early:{k}", 0.0) for k in ("encode", "windows", "scores"))
    write_json_atomic(
        Path(out_json),
        {
            "rc": rc,
            "total_s": round(end - created, 2),
            "seconds": {k: round(v, 2) for k, v in seconds.items()},
            "calls": dict(_N),
            "patched": patched,
            "shard_writer_scores_s": round(T("shard_scores", 0.0), 2),
        },
    )
    return rc


# --- the run over worker counts ---------------------------------------------------------------


def resolve_tokenizer(arg: str | None, work: Path) -> tuple[str, Path]:
    """(``--tokenizer`` for the pipeline, the tokenizer.json for the ceiling): the one given,
    else the shared Qwen3 tokenizer, else the pipeline's bundled copy of it, unpacked."""
    if arg:
        p = Path(arg)
        return str(p), p if p.is_file() else p / "tokenizer.json"
    if (QWEN3 / "tokenizer.json").is_file():
        return str(QWEN3), QWEN3 / "tokenizer.json"
    d = work / "tokenizer-bundled"
    if not (d / "tokenizer.json").is_file():
        d.mkdir(parents=True, exist_ok=True)
        assets = REPO / "transforms" / "assets"
        shutil.copy(assets / "qwen3-tokenizer_config.json", d / "tokenizer_config.json")
        data = lzma.decompress((assets / "qwen3-tokenizer.json.xz").read_bytes())
        (d / "tokenizer.tmp").write_bytes(data)
        os.replace(d / "tokenizer.tmp", d / "tokenizer.json")
    return str(d), d / "tokenizer.json"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def label(mode: str, n: int) -> tuple[str, str]:
    """(mode as shown, RAYON_NUM_THREADS per process as shown)."""
    c = cores()
    names = {
        "ceiling": "ceiling: encode_batch_fast, N processes",
        "ceiling_oversubscribed": "ceiling, RAYON_NUM_THREADS unset",
        "ceiling_shared": "ceiling, one tokenizer loaded before the fork",
        "ceiling_dask": "ceiling, N tasks on N Dask workers",
        "in_memory": "DirectRunner in_memory",
        "phases": "DirectRunner in_memory, stages timed",
        "multi_processing": "DirectRunner multi_processing",
        "multi_processing_rayon": "DirectRunner multi_processing, RAYON_NUM_THREADS=C//N",
        "dask": "DaskRunner (local cluster)",
        "dask_rayon": "DaskRunner, RAYON_NUM_THREADS=C//N",
    }
    if mode in (
        "ceiling",
        "ceiling_shared",
        "ceiling_dask",
        "multi_processing_rayon",
        "dask_rayon",
    ):
        return names[mode], str(rayon_for(n))
    if mode == "multi_processing" and n > 1:  # pipeline.runners.share_cores sets it (e46d0b2)
        return names[mode], f"{rayon_for(n)} (set by the pipeline)"
    return names[mode], f"{c} (unset)"


def row_order(modes: list[str], workers: list[int]) -> list[tuple[str, int]]:
    out = []
    for m in ALL_MODES:
        if m not in modes:
            continue
        for n in [1] if m in SINGLE else workers:
            if n == 1 and m in (
                "ceiling_oversubscribed",
                "ceiling_shared",
                "ceiling_dask",
                "multi_processing_rayon",
                "dask_rayon",
            ):
                continue  # the same as the plain mode at N=1 (C threads)
            out.append((m, n))
    return out


def finished(row: dict | None) -> bool:
    """Measured, or final without a measurement (too long for one call; Dask missing)."""
    return bool(row) and (
        "wall_s" in row or row.get("status", "").startswith(("timeout", "skipped"))
    )


def key(mode: str, n: int) -> str:
    return f"{mode}|{n}"


def estimate(rows: dict, mode: str, n: int) -> float | None:
    """Seconds a row will likely take, from the rows already measured (None: unknown)."""
    if mode.startswith("ceiling"):
        return None
    fam = [
        r for r in rows.values() if r.get("wall_s") and BASE.get(r["mode"]) == BASE.get(mode, mode)
    ]
    extra = 20.0 if mode.startswith("dask") else 0.0
    if fam:
        below = [r for r in fam if r["workers"] <= n]
        if below:
            return max(below, key=lambda r: r["workers"])["wall_s"] + extra
        return 2 * min(fam, key=lambda r: r["workers"])["wall_s"] + extra
    ref = rows.get(key("in_memory", 1), {}).get("wall_s")
    if ref:
        return ref * {"phases": 1.3, "dask": 4.0, "dask_rayon": 4.0}.get(mode, 1.5) + extra
    return None


def _fmt(x: float, spec: str = ",.0f") -> str:
    return format(x, spec)


def workers_table(rows: dict, order: list[tuple[str, int]]) -> str:
    out = []
    for mode, n in order:
        if mode == "phases":
            continue
        r = rows.get(key(mode, n))
        name, rayon = label(mode, n)
        if r is None:
            out.append([name, n, rayon, "not run yet", *[""] * 7])
            continue
        if "wall_s" not in r:
            out.append([name, n, rayon, r.get("status", "?")[:60], *[""] * 7])
            continue
        tps = r["tokens"] / r["wall_s"]
        ceil = rows.get(key("ceiling", n), {})
        eff = f"{tps / (ceil['tokens'] / ceil['wall_s']):.2f}" if ceil.get("wall_s") else ""
        base = rows.get(key(BASE[mode], 1), {})
        sp = f"{tps / (base['tokens'] / base['wall_s']):.2f}" if base.get("wall_s") else ""
        out.append(
            [
                name,
                n,
                rayon,
                f"{r['wall_s']:.1f}",
                _fmt(tps),
                eff,
                sp,
                f"{r['cpu_s'] / r['wall_s']:.1f}",
                f"{r.get('other_cpu_s', 0.0) / r['wall_s']:.1f}",
                _fmt(r["peak_rss_mb"]),
                _fmt(r["largest_process_mb"]),
            ]
        )
    return table(
        [
            "mode",
            "workers N",
            "rayon threads / process",
            "wall s",
            "tokens/s",
            "efficiency vs ceiling(N)",
            "speed-up vs N=1",
            "cores busy",
            "other load (cores)",
            "peak RSS, all processes (MB)",
            "largest process (MB)",
        ],
        out,
    )


def amdahl(rows: dict, mode: str) -> tuple[float, float, int] | None:
    """Least-squares ``wall = serial + parallel / N`` over the mode's rows with N <= cores:
    (serial, parallel, how many worker counts)."""
    pts = [
        (r["workers"], r["wall_s"])
        for r in rows.values()
        if r.get("mode") == mode and r.get("wall_s") and r["workers"] <= cores()
    ]
    if mode in ("multi_processing_rayon", "dask_rayon"):
        base = rows.get(key(BASE[mode], 1), {})
        if base.get("wall_s"):
            pts.append((1, base["wall_s"]))
    if len({n for n, _ in pts}) < 2:
        return None
    xs = [1 / n for n, _ in pts]
    ys = [w for _, w in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    p = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - p * mx, p, len(set(xs))


def notes(rows: dict, config: dict) -> str:
    lines = []
    c = config
    tok = next(
        (r["tokens"] for r in rows.values() if r.get("mode") == "in_memory" and "tokens" in r), None
    )
    ctok = next((r for r in rows.values() if r.get("mode") == "ceiling" and "tokens" in r), None)
    corpus = (
        f"Corpus: {c['input_bytes'] / 1e6:,.0f} MB of input files ({c['books']} book files, "
        f"{c['repositories']} repositories: the shared books and {c['packages']} standard-library "
        f"packages, copied under distinct names), "
        f"{'duplicate removal on' if c.get('dedup') else '`--no-dedup`'}, `--seq-len {c['seq_len']}`"
    )
    if tok:
        corpus += f"; {tok:,} tokens in the pipeline's count"
    if ctok:
        corpus += (
            f", {ctok['tokens']:,} in the ceiling's ({c.get('ceiling_chars', 0) / 1e6:,.0f} M "
            f"characters in {c.get('ceiling_chunks', 0):,} chunks of <= 64 KB; its texts lack "
            "the pipeline's headers and end-of-text tokens)"
        )
    lines.append(corpus + f". {c['cores']} cores; C//N = rayon threads per process of N.")
    for mode in ("multi_processing", "multi_processing_rayon", "dask", "dask_rayon"):
        fit = amdahl(rows, mode)
        if fit:
            s, p, n_points = fit
            head = f"{label(mode, 2)[0]}: wall ~ {s:.1f} s + {p:.1f} s / N (least squares, N <= {cores()})"
            if p <= 0:
                lines.append(f"{head}: more workers do not shorten the run on this machine.")
            elif s > 0 and n_points >= 3:
                lines.append(
                    f"{head}: {s:.1f} s do not shrink with N, so at most "
                    f"{(s + p) / s:.1f}x over N=1 however many workers."
                )
            else:
                lines.append(f"{head}.")
    done = sorted(
        (r for r in rows.values() if r.get("wall_s")),
        key=lambda r: (ALL_MODES.index(r["mode"]), r["workers"]),
    )
    if done:
        lines.append(
            "CPU seconds per million tokens (all processes; the work, whatever the wall time): "
            + "; ".join(
                f"{label(r['mode'], r['workers'])[0]} N={r['workers']} "
                f"{r['cpu_s'] / r['tokens'] * 1e6:.2f}"
                for r in done
                if r["mode"] != "phases"
            )
            + "."
        )
    for r in done:
        if r.get("mode", "").startswith(("multi_processing", "dask")) and r.get("per_process"):
            procs = [
                p for p in r["per_process"] if p["cmd"] not in ("pipeline driver", "dask cluster")
            ]
            workers = sorted(
                (p for p in procs if p["cmd"] in ("beam sdk worker",) or p["cpu_s"] > 1.0),
                key=lambda p: -p["cpu_s"],
            )[: r["workers"] + 4]
            drv = next((p for p in r["per_process"] if p["cmd"] == "pipeline driver"), None)
            lines.append(
                f"{label(r['mode'], r['workers'])[0]}, N={r['workers']}: {r['processes']} "
                f"processes, up to {r['max_threads_per_process']} threads in one; CPU s of the "
                "busiest processes "
                + ", ".join(f"{p['cpu_s']:.0f} ({p['threads']} thr)" for p in workers)
                + (
                    f"; RAYON_NUM_THREADS in the workers: {workers[0]['RAYON_NUM_THREADS']}"
                    if workers and "RAYON_NUM_THREADS" in workers[0]
                    else ""
                )
                + (f"; driver {drv['cpu_s']:.0f}" if drv else "")
                + "."
            )
        tl = r.get("workers_timeline") or {}
        if "startup_s" in tl:
            lines.append(
                f"{label(r['mode'], r['workers'])[0]}, N={r['workers']}, where the wall time "
                f"went (benchmarks/timeline): "
                + (
                    "worker processes started at {0[0]:.1f}-{0[1]:.1f} s, had Beam and the "
                    "steps imported at {1[0]:.1f}-{1[1]:.1f} s{2}; ".format(
                        tl["workers_started_s"],
                        tl["workers_imported_s"],
                        ", DoFns set up by {0[0]:.1f}-{0[1]:.1f} s".format(tl["workers_set_up_s"])
                        if tl.get("workers_set_up_s")
                        else "",
                    )
                    if "workers_started_s" in tl
                    else ""
                )
                + f"first read at {tl['startup_s']:.1f} s; the fused "
                f"read + tokenize stage ended on its workers between {tl['stage_end_first_s']:.1f}"
                f" and {tl['stage_end_last_s']:.1f} s; {tl['after_stage_s']:.1f} s after it "
                "(plan, cut, shards, manifest, report); seconds in read / tokenize per worker "
                + ", ".join(
                    f"{a:.0f}/{b:.0f}"
                    for a, b in zip(
                        tl["read_s_per_worker"], tl["tokenize_s_per_worker"], strict=False
                    )
                )
                + "."
            )
    return "\n".join(f"- {x}" for x in lines)


def phases_table(r: dict) -> str:
    ph = r["phases"]
    total = ph["total_s"]
    runs = dict(PHASES)
    out = [[k, f"{v:.1f}", f"{v / total:.0%}", runs.get(k, "")] for k, v in ph["seconds"].items()]
    out.append(["total (one process, stages timed)", f"{total:.1f}", "100%", ""])
    serial = sum(
        v for k, v in ph["seconds"].items() if not runs.get(k, "").startswith("per document")
    )
    body = table(["stage", "seconds", "share", "runs"], out)
    body += (
        f"\n\nNot spread over documents: {serial:.1f} s of {total:.1f} s ({serial / total:.0%})"
        f"; {r.get('shards', '?')} shard(s), so shard writing runs in at most that many workers."
    )
    if ph.get("shard_writer_scores_s"):
        body += (
            f" Scores of partial pieces in the shard writer: {ph['shard_writer_scores_s']:.1f} s."
        )
    return body


def markdown(rows: dict, order, config: dict, pairs: dict | None = None) -> str:
    body = workers_table(rows, order) + "\n\n" + notes(rows, config)
    body += "".join(f"\n- {line}" for line in pairs_notes(pairs or {}))
    ph = rows.get(key("phases", 1))
    if ph and ph.get("phases"):
        body += "\n\nWhere one in_memory run's time goes (the stages timed in-process):\n\n"
        body += phases_table(ph)
    return body


def command_line(args, workers) -> str:
    cmd = f"python benchmarks/scaling.py --workers {','.join(map(str, workers))} --corpus-mb {args.corpus_mb:g} --seq-len {args.seq_len}"
    if dedup_on():
        cmd = "SCALING_DEDUP=1 " + cmd
    if args.modes != DEFAULT_MODES:
        cmd += f" --modes {args.modes}"
    if args.wait_idle:
        cmd += f" --wait-idle {args.wait_idle:g}"
    if args.attempts > 1:
        cmd += f" --attempts {args.attempts} --max-other-load {args.max_other_load:g}"
    if args.pairs:
        cmd += f" --pairs {args.pairs}"
    return cmd


def _copy(path, dest: str | None) -> None:
    """The results file to ``--copy-to`` (none there, or the same file: SCALING_RESULTS under
    $OUT on the device, nothing to copy)."""
    if dest and not (os.path.exists(dest) and os.path.samefile(path, dest)):
        shutil.copy(path, dest)


def workers_main(args) -> None:
    t_start = time.time()
    deadline = t_start + args.budget_s if args.budget_s else None
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    workers = sorted({int(w) for w in args.workers.split(",")})
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ALL_MODES]
    if bad:
        raise SystemExit(f"--modes: unknown {bad}; known: {', '.join(ALL_MODES)}")
    tok_arg, tok_json = resolve_tokenizer(args.tokenizer, work)
    units, missing = base_units(args.books, extra_repos=args.extra_repos, unpack_dir=work / "extra")
    entries = plan(units, target_bytes=int(args.corpus_mb * 1e6))
    config = {
        "corpus_mb": args.corpus_mb,
        "input_bytes": sum(u.nbytes for u, _ in entries),
        "books": sum(1 for u, _ in entries if u.kind == "book"),
        "repositories": sum(1 for u, _ in entries if u.kind == "repo"),
        "packages": sum(1 for u in units if u.kind == "repo"),
        "missing_packages": missing,
        "seq_len": args.seq_len,
        "cores": cores(),
        "machine": machine(),
        "tokenizer_sha256": _sha256(tok_json),
        "dedup": dedup_on(),
    }
    ident = {
        k: config[k]
        for k in ("input_bytes", "books", "repositories", "seq_len", "machine", "tokenizer_sha256")
    }
    if config["dedup"]:  # rows of either kind never mix (earlier files have no such key)
        ident["dedup"] = True
    path = Path(args.results)
    rows: dict = {}
    pairs: dict = {}  # --pairs: "MODE|N" -> the alternated rounds (measure_pairs)
    saved: dict = {}
    if path.exists() and not args.fresh:
        saved = json.loads(path.read_text())
        if saved.get("identity") != ident:
            raise SystemExit(
                f"{path} holds rows of another configuration ({saved.get('identity')}); "
                "use --fresh to start over, or --results another file"
            )
        rows = saved.get("rows", {})
        pairs = saved.get("pairs", {})
        config.update({k: v for k, v in saved.get("config", {}).items() if k.startswith("ceiling")})
    for item in filter(None, (args.redo or "").split(",")):
        mode, _, n = item.partition(":")
        rows.pop(key(mode.strip(), int(n or 1)), None)
    order = row_order(modes, workers)
    cmd = command_line(args, workers)
    title = f"Parallel scaling over worker counts, --seq-len {args.seq_len}"

    def save() -> None:
        write_json_atomic(
            path,
            {
                "title": title,
                "updated": now_utc(),
                "commit": commit(),
                "machine": machine(),
                "command": cmd,
                "identity": ident,
                "config": config,
                "rows": rows,
                "pairs": pairs,
                "markdown": markdown(rows, order, config, pairs),
            },
        )
        _copy(path, args.copy_to)

    todo = [(m, n) for m, n in order if not finished(rows.get(key(m, n)))]
    print(f"{len(order) - len(todo)} of {len(order)} rows done in {path}", flush=True)
    stopped = None
    # the same files with duplicate removal on or off: one copy
    files = {k: v for k, v in ident.items() if k != "dedup"}
    corpus = (
        work
        / f"corpus-{hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:10]}"
    )
    if todo or args.pairs:
        if not (corpus / ".done").exists():
            shutil.rmtree(corpus, ignore_errors=True)
            t = time.perf_counter()
            materialize(corpus, entries)
            (corpus / ".done").touch()
            print(
                f"corpus: {config['input_bytes'] / 1e6:.0f} MB in {time.perf_counter() - t:.0f} s",
                flush=True,
            )
        for mode, n in todo:
            k = key(mode, n)
            name, rayon = label(mode, n)
            best = None
            for attempt in range(1, max(1, args.attempts) + 1):
                left = deadline - time.time() if deadline else None
                est = estimate(rows, mode, n)
                if left is not None and (left < 15 or (est and left < est * 1.15 + 10)):
                    stopped = f"{left:.0f} s left, {mode} N={n} needs ~{est or 0:.0f} s"
                    break
                waited = load = None
                if args.wait_idle:
                    waited, load = wait_idle(min(args.wait_idle, left or args.wait_idle))
                    left = deadline - time.time() if deadline else None
                print(f"[{time.time() - t_start:5.0f}s] {name}, N={n} ...", flush=True)
                try:
                    row = measure(
                        mode,
                        n,
                        rayon,
                        corpus,
                        tok_arg,
                        tok_json,
                        args,
                        left,
                        units,
                        entries,
                        config,
                    )
                except RowTimeout as err:
                    if left is not None and left >= 0.9 * args.budget_s:
                        rows[k] = {"mode": mode, "workers": n, "rayon_threads": rayon,
                                   "status": f"timeout: {err} (does not fit one call)"}  # fmt: skip
                        save()
                    stopped = f"{mode} N={n}: {err}"
                    break
                if waited is not None:
                    row.update(idle_wait_s=round(waited, 1), other_cores_busy_before=round(load, 2))
                if "wall_s" not in row:
                    print(row["status"], flush=True)
                    best = row
                    break
                other = row.get("other_cpu_s", 0.0) / row["wall_s"]
                print(
                    f"    {row['wall_s']:.1f} s, {row['tokens'] / row['wall_s']:,.0f} tokens/s, "
                    f"peak {row['peak_rss_mb']:,.0f} MB, cpu {row['cpu_s']:.0f} s, "
                    f"others' load {other:.2f} cores",
                    flush=True,
                )
                if best is None or other < best.get("other_cpu_s", 0.0) / best["wall_s"]:
                    best = row
                best["attempts"] = attempt
                if other <= args.max_other_load:
                    break
            if best is not None:
                rows[k] = best
                save()
            if stopped:
                break
    if args.pairs and not stopped:
        stopped = measure_pairs(args, rows, pairs, workers, modes, corpus, tok_arg, tok_json,
                                units, entries, config, deadline, save)  # fmt: skip
    save()
    body = markdown(rows, order, config, pairs)
    left_rows = [k for k in order if not finished(rows.get(key(*k)))]
    if stopped or left_rows:
        print(f"\nSTOPPED ({stopped}); {len(left_rows)} rows left: run again to resume.\n")
    record(
        title,
        cmd,
        body,
        doc=args.doc and not left_rows,
        json_path=path,
        data={
            "identity": ident,
            "config": config,
            "rows": rows,
            "pairs": pairs,
            "complete": not left_rows,
        },
    )
    _copy(path, args.copy_to)
    if not left_rows and not args.keep_corpus:
        for p in work.glob("corpus-*"):
            shutil.rmtree(p, ignore_errors=True)


def measure_pairs(args, rows, pairs, workers, modes, corpus, tok_arg, tok_json, units, entries,
                  config, deadline, save) -> str | None:  # fmt: skip
    """``--pairs R``: for each pipeline mode and N, the ceiling at N and the pipeline at N run
    one after the other, R times (ceiling, pipeline, ceiling, pipeline, ...), each pair's
    ratio kept: a shared machine's speed drifts from minute to minute (the same ceiling ran
    166-216 CPU seconds over one session's loans), and the two runs of a pair see the same
    machine. ``pairs["MODE|N"]``: the pairs so far (resumed). Returns why it stopped early,
    or None."""
    pipeline_modes = [m for m in modes if not m.startswith("ceiling") and m != "phases"]
    for n in workers:
        for mode in pipeline_modes:
            got = pairs.setdefault(key(mode, n), [])
            for r in range(len(got), args.pairs):
                left = deadline - time.time() if deadline else None
                est = (estimate(rows, "ceiling", n) or 0) + (estimate(rows, mode, n) or 0)
                if left is not None and (left < 15 or (est and left < est * 1.15 + 10)):
                    return f"{left:.0f} s left, pair {r + 1} of {mode} N={n} needs ~{est:.0f} s"
                pair = {}
                for m in ("ceiling", mode):
                    print(f"pair {r + 1}/{args.pairs}: {m}, N={n} ...", flush=True)
                    one = measure(m, n, label(m, n)[1], corpus, tok_arg, tok_json, args, left,
                                  units, entries, config)  # fmt: skip
                    if "wall_s" not in one:
                        return f"pair {r + 1} of {mode} N={n}: {m}: {one.get('status')}"
                    pair[m] = {k: one.get(k) for k in ("wall_s", "cpu_s", "peak_rss_mb", "tokens")}
                    if m != "ceiling":
                        pair["after_stage_s"] = one.get("workers_timeline", {}).get("after_stage_s")
                        pair["startup_s"] = one.get("workers_timeline", {}).get("startup_s")
                pair["ratio"] = round(pair["ceiling"]["wall_s"] / pair[mode]["wall_s"], 3)
                pair["date"] = now_utc()
                print(f"    ceiling {pair['ceiling']['wall_s']:.2f} s, {mode} "
                      f"{pair[mode]['wall_s']:.2f} s: {pair['ratio']:.2f}", flush=True)  # fmt: skip
                got.append(pair)
                save()
    return None


def pairs_notes(pairs: dict) -> list[str]:
    """The lines of --pairs for the notes: each mode's paired ratios and their median."""
    lines = []
    for k, got in sorted(pairs.items()):
        if not got:
            continue
        mode, _, n = k.partition("|")
        ratios = [p["ratio"] for p in got]
        walls = ", ".join(f"{p['ceiling']['wall_s']:.2f} / {p[mode]['wall_s']:.2f}" for p in got)
        lines.append(
            f"Ceiling and {mode} at N={n} alternated {len(got)} times (`--pairs`): ceiling / "
            f"pipeline wall s {walls}; ratios {', '.join(f'{x:.2f}' for x in ratios)}, median "
            f"**{statistics.median(ratios):.2f}**."
        )
    return lines


def measure(mode, n, rayon, corpus, tok_arg, tok_json, args, left, units, entries, config) -> dict:
    """One row: its measurements, or a ``status`` saying why there are none; raises
    :class:`RowTimeout` when it ran out of the time left."""
    row = {"mode": mode, "workers": n, "rayon_threads": rayon, "date": now_utc(),
           "commit": commit(), "machine": machine()}  # fmt: skip
    try:
        if mode.startswith("ceiling"):
            if not _CHUNKS:
                config.update(load_chunks(units, entries))
            threads = None if mode == "ceiling_oversubscribed" else rayon_for(n)
            shared = mode == "ceiling_shared"
            if mode == "ceiling_dask":
                r = run_ceiling_dask(n, str(tok_json), Path(args.work), left)
            else:
                r = run_ceiling(n, threads, str(tok_json), left, shared)
            r["command"] = (
                f"{n} processes x encode_batch_fast(64 KB chunks, {CEILING_BATCH} a call), "
                + (f"RAYON_NUM_THREADS={threads}" if threads else "RAYON_NUM_THREADS unset")
                + (", one tokenizer loaded before the fork" if shared else "")
                + (
                    ", as Dask tasks (pipeline.dask_cluster's threads)"
                    if mode == "ceiling_dask"
                    else ""
                )
            )
        else:
            r = run_pipeline(mode, n, corpus, tok_arg, args.seq_len, Path(args.work), left)
        row.update(r)
    except RowTimeout:
        raise
    except Exception as err:  # one failing mode must not lose the others
        msg = str(err)
        row["status"] = msg if msg.startswith("skipped") else f"failed: {msg[-1500:]}"
    return row


# --- the run over corpus sizes (memory flatness) ----------------------------------------------


def factors_main(args) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tok_arg, _ = resolve_tokenizer(args.tokenizer, work)
    units, _ = base_units(args.books, extra_repos=args.extra_repos, unpack_dir=work / "extra")
    mode, n = args.factor_mode, args.factor_workers if args.factor_mode != "in_memory" else 1
    rows, data = [], []
    base = None
    for factor in (int(f) for f in args.factors.split(",")):
        corpus = work / f"factor-{factor}"
        shutil.rmtree(corpus, ignore_errors=True)
        materialize(corpus, plan(units, factor=factor))
        try:
            res = run_pipeline(mode, n, corpus, tok_arg, args.seq_len, work, None)
        finally:
            shutil.rmtree(corpus, ignore_errors=True)
        tokens, wall, rss = res["tokens"], res["wall_s"], res["peak_rss_mb"]
        base = base or (wall, rss, tokens, res["largest_process_mb"])
        rows.append(
            [
                f"{factor}x",
                f"{tokens:,}",
                f"{wall:.1f}",
                f"{wall / base[0] / (tokens / base[2]):.2f}",
                f"{tokens / wall:,.0f}",
                f"{rss:,.0f}",
                f"{rss / base[1]:.2f}",
                f"{res['largest_process_mb']:,.0f}",
                f"{res['largest_process_mb'] / base[3]:.2f}",
            ]
        )
        data.append({"factor": factor, **{k: v for k, v in res.items() if k != "per_process"}})
        print(rows[-1], flush=True)
    name = label(mode, n)[0] + (f", {n} workers" if mode != "in_memory" else "")
    cmd = f"python benchmarks/scaling.py --seq-len {args.seq_len} --factors {args.factors}"
    if mode != "in_memory":
        cmd += f" --factor-mode {mode} --factor-workers {n}"
    record(
        f"Scaling, --seq-len {args.seq_len}, {name}",
        cmd,
        table(
            [
                "corpus",
                "tokens",
                "wall s",
                "time per token vs 1x",
                "tokens/s",
                "peak RSS, all processes (MB)",
                "RSS vs 1x",
                "largest process (MB)",
                "largest vs 1x",
            ],
            rows,
        ),
        doc=args.doc,
        json_path=Path(args.results or RESULTS / f"scaling_factors_{mode}.json"),
        data={"rows": data},
    )


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--phase-child":
        rest = sys.argv[3:]
        sys.exit(phase_child(sys.argv[2], rest[1:] if rest[:1] == ["--"] else rest))
    ap = argparse.ArgumentParser(
        description="Parallel scaling over worker counts, or memory over corpus size (--factors).",
        epilog="See the module docstring: python -c 'import benchmarks.scaling as s; help(s)'",
    )
    ap.add_argument("--seq-len", type=int, default=65536)
    ap.add_argument("--workers", default="1,2,4,8,16", help="worker counts N (default 1,2,4,8,16)")
    ap.add_argument("--corpus-mb", type=float, default=300.0, help="input size (default 300)")
    ap.add_argument("--modes", default=DEFAULT_MODES, help=f"of {', '.join(ALL_MODES)}")
    ap.add_argument("--results", help="JSON (default benchmarks/results/scaling_workers.json)")
    ap.add_argument("--fresh", action="store_true", help="measure every row again")
    ap.add_argument("--redo", help="measure these rows again, e.g. ceiling:1,multi_processing:2")
    ap.add_argument("--budget-s", type=float, help="stop before a row that would end past this")
    ap.add_argument("--copy-to", help="also copy the results JSON here after each row")
    ap.add_argument(
        "--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "longctx-scaling")
    )
    ap.add_argument("--keep-corpus", action="store_true")
    ap.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="after the rows, run the ceiling and each pipeline mode alternately this many "
        "times at each N and keep each pair's ratio (default 0: none)",
    )
    ap.add_argument(
        "--max-other-load",
        type=float,
        default=0.25,
        help="a row during which other processes kept more cores than this busy is measured "
        "again, up to --attempts times; the least disturbed attempt is kept (default 0.25)",
    )
    ap.add_argument("--attempts", type=int, default=1, help="see --max-other-load (default 1)")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        help="before each row wait up to this many seconds for other work on the machine to "
        "stop (a shared machine; default 0: do not wait)",
    )
    ap.add_argument("--tokenizer", help="default: the shared Qwen3, else the bundled copy")
    ap.add_argument("--books", type=Path, default=BOOKS)
    ap.add_argument("--extra-repos", type=Path, help="folder of more repositories or archives")
    ap.add_argument(
        "--doc", action="store_true", help="also append the table to docs/benchmarks.md"
    )
    ap.add_argument("--factors", help="corpus sizes, e.g. 1,4,16: the memory-flatness run")
    ap.add_argument("--factor-mode", default="in_memory",
                    choices=["in_memory", "multi_processing", "multi_processing_rayon", "dask"])  # fmt: skip
    ap.add_argument("--factor-workers", type=int, default=2)
    args = ap.parse_args()
    if args.factors:
        factors_main(args)
    else:
        args.results = args.results or str(RESULTS / "scaling_workers.json")
        workers_main(args)


if __name__ == "__main__":
    main()
