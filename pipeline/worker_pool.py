"""DirectRunner ``multi_processing`` workers started before the driver imports Beam.

Beam 2.77's FnApiRunner starts its N worker processes only when it runs the first stage, ~3.5 s
into a run (the driver's own Beam import, flags, discovery, the graph), and each then spends
2.4-4.6 s importing Beam and the pipeline and 0.6-0.8 s parsing the tokenizer before it reads a
file (16 workers on nvidia-h200's CPUs, docs/benchmarks.md). A :class:`WorkerPool` made by
``pipeline.run`` as soon as the flags are checked starts those N processes at once; each imports
Beam's worker harness and the pipeline's steps, loads the tokenizer (local files only) and
waits. When the runner starts a worker, :func:`serve_workers` hands it one of them: the
environment Beam would give its own worker process (the control and logging addresses, the
pipeline options) goes down the process's stdin and it runs Beam's harness,
``apache_beam.runners.worker.sdk_worker_main``, exactly as Beam's worker would.

Nothing depends on it: a pooled process that died or was never used is passed over, and Beam
starts its own. Unused processes are stopped when the run ends; one whose driver is gone sees
its stdin close and exits.

Run as ``python -m pipeline.worker_pool TOKENIZER TRUST``: the pooled process itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading

HARNESS = "apache_beam.runners.worker.sdk_worker_main"
BUNDLED = "-"  # argv for "no --tokenizer given": the bundled tokenizer
_ACTIVE: WorkerPool | None = None  # the pool the runner's next workers come from
TOKENIZER_THREADS = "RAYON_NUM_THREADS"  # the Rust tokenizer's thread pool (rayon) reads it


def tokenizer_threads(cores: int, workers: int) -> int:
    """Threads for each worker process's tokenizer: the cores shared out (at least 1)."""
    return max(1, cores // max(1, workers))


def worker_environment(workers: int, environ=os.environ) -> dict:
    """The environment N multi_processing workers start with: ``environ`` and, for N > 1,
    cores // N tokenizer threads each unless the user set ``RAYON_NUM_THREADS`` (the rule of
    ``pipeline.runners.share_cores``, which gives Beam's own workers the same)."""
    env = dict(environ)
    if workers > 1 and TOKENIZER_THREADS not in env:
        env[TOKENIZER_THREADS] = str(tokenizer_threads(os.cpu_count() or 1, workers))
    return env


def planned_workers(argv: list[str]) -> int:
    """The worker processes a run of ``argv`` will ask Beam for: N for DirectRunner
    ``--direct_running_mode multi_processing`` (``--direct_num_workers``, 0 meaning one per
    core as Beam reads it), 0 for every other runner or mode. Read with Beam's own rules for
    these flags (exact names, no abbreviations) before Beam is imported; a value Beam would
    refuse gives 0 (no pool), and Beam's parser reports it."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--runner")
    parser.add_argument("--direct_running_mode", default="in_memory")
    parser.add_argument("--direct_num_workers", type=int, default=1)
    try:
        args, _ = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):
        return 0
    if args.runner not in (None, "DirectRunner", "direct"):
        return 0
    if args.direct_running_mode != "multi_processing" or args.direct_num_workers < 0:
        return 0
    return args.direct_num_workers or os.cpu_count() or 1


def _tokenizer_arg(spec: str | None) -> str | None:
    """What a pooled process may load ahead: the bundled tokenizer or a local tokenizer.json
    (file or folder). A Hub id or a folder that needs ``transformers`` is left to the worker's
    own setup (no network or repository code in a process that may never be used)."""
    if not spec:
        return BUNDLED
    from pathlib import Path

    path = Path(spec).expanduser()
    if path.is_file() or (path / "tokenizer.json").is_file():
        return str(path)
    return None


class WorkerPool:
    """N pooled worker processes, started now; :meth:`take` hands one to the runner."""

    def __init__(
        self,
        count: int,
        tokenizer: str | None = None,
        trust_remote_code: bool = False,
        log_level: str = "WARNING",
    ):
        env = worker_environment(count)
        tok = _tokenizer_arg(tokenizer) or ""
        trust = "1" if trust_remote_code else "0"
        command = [sys.executable, "-m", __name__, tok, trust, log_level]
        self._lock = threading.Lock()
        self._idle: list[subprocess.Popen] = []
        self.handed: list[int] = []  # pids handed to the runner, in order
        for _ in range(count):
            try:
                self._idle.append(subprocess.Popen(command, stdin=subprocess.PIPE, env=env))
            except OSError:
                break  # out of processes: Beam starts the rest itself

    @classmethod
    def for_run(cls, argv: list[str], config) -> WorkerPool | None:
        """The pool a run of ``argv`` with settings ``config`` (a ``BuildConfig``) uses, or
        None (not DirectRunner multi_processing)."""
        count = planned_workers(argv)
        if not count:
            return None
        return cls(count, config.tokenizer, config.trust_remote_code, config.console_log_level)

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self._idle] + list(self.handed)

    def take(self, env: dict) -> subprocess.Popen | None:
        """A waiting process, started as Beam's worker with ``env``; None when none is left."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                proc = self._idle.pop(0)
            if proc.poll() is not None:
                continue  # died while waiting: the next one
            try:
                proc.stdin.write(json.dumps(dict(env)).encode() + b"\n")
                proc.stdin.close()
            except OSError:
                proc.kill()
                proc.wait()
                continue
            with self._lock:
                self.handed.append(proc.pid)
            return proc

    def close(self) -> None:
        """Stop the processes nobody took (those handed to Beam are Beam's to stop)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for proc in idle:
            proc.kill()
        for proc in idle:
            proc.wait()
            proc.stdin.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Subprocess:
    """Stands for the ``subprocess`` module inside Beam's ``local_job_service``, whose
    ``SubprocessSdkWorker.run`` starts each worker with ``Popen(COMMAND, shell=True, env=...)``:
    the active pool's process is handed out for Beam's worker command; anything else, and any
    call once the pool is spent, goes to ``subprocess`` unchanged."""

    def __getattr__(self, name):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(args, *rest, **kwargs):  # noqa: N802 (subprocess's name)
        pool = _ACTIVE
        if pool is not None and not rest and kwargs.get("shell") and _is_harness(args):
            proc = pool.take(kwargs.get("env") or os.environ)
            if proc is not None:
                return proc
        return subprocess.Popen(args, *rest, **kwargs)


def _is_harness(command) -> bool:
    return command == f"{sys.executable} -m {HARNESS}"


def serve_workers(pool: WorkerPool | None) -> None:
    """Make ``pool`` the source of the FnApiRunner's next worker processes (None: Beam starts
    its own). Installed once into Beam's ``local_job_service``."""
    global _ACTIVE
    from apache_beam.runners.portability import local_job_service

    if not isinstance(local_job_service.subprocess, _Subprocess):
        local_job_service.subprocess = _Subprocess()
    _ACTIVE = pool


# What Beam's harness warns of in every worker of every run, about nothing the run can change:
# the project's flags, which the harness cannot parse (the DoFns carry the settings), and the
# semi-persistent folder that DirectRunner never gives. Dropped at the source (not sent to the
# driver either), in the pooled workers only.
_EXPECTED = {
    "apache_beam.options.pipeline_options": "Discarding unparseable args",
    "apache_beam.runners.worker.sdk_worker_main": "No semi_persistent_directory found",
}


def _not_expected(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_EXPECTED.get(record.name, "\0"))


def _serve(tokenizer: str, trust_remote_code: bool, log_level: str) -> int:
    """The pooled process: import, load, wait for Beam's environment, run Beam's harness."""
    # Below the driver: N processes importing Beam at once took the driver's cores while it
    # imported Beam and built the graph, which is what the workers then wait for (the first
    # work came 1.6 s later at N = 16 than at N = 1 on 16 cores). The workers all run at the
    # same priority as each other, and the driver is idle while they work.
    with contextlib.suppress(OSError):
        os.nice(10)
    # What the worker logs goes to the runner (Beam's logging service); on the terminal it shows
    # at the run's own level. Set before any import: a module's logging.warning() would
    # otherwise give the root logger a handler that prints every INFO line of the harness
    # (about 12 a worker, under --quiet as well).
    console = logging.StreamHandler()
    console.setLevel(log_level)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(console)
    for name in _EXPECTED:
        logging.getLogger(name).addFilter(_not_expected)
    from apache_beam.runners.worker import sdk_worker_main

    import pipeline.steps  # noqa: F401  (the DoFns the runner sends, unpickled here)

    if tokenizer:
        from transforms.samples.tokenize import load_tokenizer

        # kept in the module's cache, where the tokenize step's setup finds it; a bad
        # --tokenizer is the driver's to report, by flag
        with contextlib.suppress(Exception):
            load_tokenizer(None if tokenizer == BUNDLED else tokenizer, trust_remote_code)
    try:
        line = sys.stdin.buffer.readline()
    except KeyboardInterrupt:
        return 0
    if not line.strip():
        return 0  # the run ended, or its driver is gone, before this process was needed
    env = json.loads(line)
    os.environ.clear()
    os.environ.update(env)
    sdk_worker_main.main(sys.argv)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[2] not in ("0", "1"):
        sys.exit(
            "usage: python -m pipeline.worker_pool TOKENIZER 0|1 LEVEL (pipeline.run starts it)"
        )
    try:
        sys.exit(_serve(sys.argv[1], sys.argv[2] == "1", sys.argv[3]))
    except KeyboardInterrupt:
        sys.exit(130)
