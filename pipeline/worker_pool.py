"""DirectRunner ``multi_processing`` workers forked from a process started before the driver
imports Beam.

Beam 2.77's FnApiRunner starts its N worker processes only when it runs the first stage, ~3.5 s
into a run (the driver's own Beam import, flags, discovery, the graph), and each then spends
2.4-4.6 s importing Beam and the pipeline and 0.6-0.8 s parsing the tokenizer before it reads a
file (16 workers on nvidia-h200's CPUs, docs/benchmarks.md). A :class:`WorkerPool` made by
``pipeline.run`` as soon as the flags are checked starts one server process, which imports
Beam's worker harness and the pipeline's steps and loads the tokenizer (local files only), once,
beside the driver's own start. When the runner starts a worker, :func:`serve_workers` asks the
server instead: it forks a worker that already has all of that (a few milliseconds; the pages
are shared until written), sets the environment Beam would give its own worker process (the
control and logging addresses, the pipeline options) and runs Beam's harness,
``apache_beam.runners.worker.sdk_worker_main``, exactly as Beam's worker would. The runner gets a
stand-in for the process (:class:`ForkedWorker`: ``wait``, ``poll``, ``kill``, ``returncode``,
what Beam uses of a ``Popen``); the server reports each worker's exit.

Nothing depends on it: if the server is gone or does not answer, Beam starts its own workers.
The server exits when the driver closes its stdin (at the end of the run, or when the driver
dies) and its workers have exited.

Run as ``python -m pipeline.worker_pool TOKENIZER TRUST LEVEL FD``: the server itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time

from pipeline import run_folders
from pipeline.errors import exit_now, interrupt_ends_at_once
from pipeline.tokenizer_probe import NO_SPEC

HARNESS = "apache_beam.runners.worker.sdk_worker_main"
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


def local_tokenizer(spec: str | None) -> str | None:
    """What a pooled process may load ahead: the bundled tokenizer or a local tokenizer.json
    (file or folder). A Hub id or a folder that needs ``transformers`` is left to the worker's
    own setup (no network or repository code in a process that may never be used)."""
    if not spec:
        return NO_SPEC
    from pathlib import Path

    path = Path(spec).expanduser()
    if path.is_file() or (path / "tokenizer.json").is_file():
        return str(path)
    return None


class ForkedWorker:
    """What Beam's ``SubprocessSdkWorker`` uses of the ``Popen`` of its worker, for a worker
    forked by the pool's server (not a child of the driver: its exit comes from the server,
    or, once the server is gone, from :func:`_orphan_exit`)."""

    def __init__(self, pid: int, server_gone: threading.Event):
        self.pid, self._server_gone = pid, server_gone
        self.returncode: int | None = None
        self._done = threading.Event()

    def _exited(self, code: int) -> None:
        self.returncode = code
        self._done.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done.wait(0.2):
            if self._server_gone.is_set():  # every answer it sent has been read
                code = _orphan_exit(self.pid)
                if code is not None:
                    self._exited(code)
                    break
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)


def _orphan_exit(pid: int) -> int | None:
    """The exit code of a worker whose server died before it (killed: the OOM killer, a
    pkill), or None while it runs. Orphaned, the worker is reaped by init, or becomes the
    driver's own child where the driver is PID 1 (a container without an init) or a
    subreaper: then it is reaped here, with its real code. Reaped elsewhere, its code is lost
    and counts as 0: a worker that failed has already failed the run through Beam's control
    channel, and a made-up failure would print a false traceback for each worker."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not the driver's: reaped by init, or soon to be
        return None if run_folders.running(pid) else 0
    return os.waitstatus_to_exitcode(status) if got else None


class WorkerPool:
    """Up to N workers, forked on demand from a server started now; :meth:`take` hands one to
    the runner."""

    ANSWER_S = 120  # the longest a take waits for the server (it may still be importing)

    def __init__(
        self,
        count: int,
        tokenizer: str | None = None,
        trust_remote_code: bool = False,
        log_level: str = "WARNING",
    ):
        tok = local_tokenizer(tokenizer) or ""
        trust = "1" if trust_remote_code else "0"
        self._lock = threading.Lock()
        self._take = threading.Lock()  # one question to the server at a time: answers in order
        self._left = count
        self._started: queue.Queue = queue.Queue()
        self._gone = threading.Event()  # the server has exited and all it said has been read
        self._workers: dict[int, ForkedWorker] = {}
        self.handed: list[int] = []  # pids handed to the runner, in order
        read_end, write_end = os.pipe()
        try:
            self.server: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-m", __name__, tok, trust, log_level, str(write_end)],
                stdin=subprocess.PIPE,
                pass_fds=(write_end,),
                env=worker_environment(count),
            )
        except OSError:
            self.server = None  # Beam starts its own workers
            os.close(read_end)
        finally:
            os.close(write_end)
        if self.server is not None:
            self._answers = os.fdopen(read_end, "rb")
            threading.Thread(target=self._read, name="longctx-pool", daemon=True).start()

    @classmethod
    def for_run(cls, argv: list[str], config) -> WorkerPool | None:
        """The pool a run of ``argv`` with settings ``config`` (a ``BuildConfig``) uses, or
        None (not DirectRunner multi_processing)."""
        count = planned_workers(argv)
        if not count:
            return None
        return cls(count, config.tokenizer, config.trust_remote_code, config.console_log_level)

    def _read(self) -> None:
        """The server's answers: ``started PID``, ``exited PID CODE``."""
        for line in self._answers:
            what, *rest = line.split()
            if what == b"started":
                worker = ForkedWorker(int(rest[0]), self._gone)
                with self._lock:
                    self._workers[worker.pid] = worker
                self._started.put(worker)
            elif what == b"exited":
                with self._lock:
                    worker = self._workers.get(int(rest[0]))
                if worker is not None:
                    worker._exited(int(rest[1]))
        self._gone.set()  # end of the pipe: the server has exited (its workers do not hold it)
        self._started.put(None)  # the server is gone: no more workers from it

    def take(self, env: dict) -> ForkedWorker | None:
        """A worker forked with ``env`` and running Beam's harness; None when the pool is
        spent, its server is gone, or it does not answer in time (Beam starts its own)."""
        with self._take:
            server = self.server
            with self._lock:
                if server is None or self._left <= 0 or server.poll() is not None:
                    return None
                self._left -= 1
            try:
                server.stdin.write(json.dumps(dict(env)).encode() + b"\n")
                server.stdin.flush()
                worker = self._started.get(timeout=self.ANSWER_S)
            except (OSError, ValueError, queue.Empty):  # ValueError: closed meanwhile
                worker = None
        if worker is None:
            with self._lock:
                self._left = 0  # a server that failed once is not asked again
            return None
        with self._lock:
            self.handed.append(worker.pid)
        return worker

    def release(self) -> None:
        """No more workers (the pipeline is done): the server exits once the workers it forked
        have exited, while the driver goes on (the manifest, the report); :meth:`close`
        then finds it gone."""
        with self._take:
            self._left = 0
            if self.server is not None and self.handed:
                with contextlib.suppress(OSError):
                    self.server.stdin.close()

    def close(self) -> None:
        """No more workers. A server that forked none is stopped at once (a run refused
        before it started does not wait for its imports); otherwise it exits once the workers
        it forked have exited (Beam stops them at the end of its run), or is killed after
        10 s."""
        with self._take:
            server, self.server = self.server, None
        if server is None:
            return
        with contextlib.suppress(OSError):
            server.stdin.close()
        if not self.handed:
            server.kill()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

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


def _serve(tokenizer: str, trust_remote_code: bool, log_level: str, answers_fd: int) -> int:
    """The pool's server: import and load once, then fork one worker for each environment
    that comes down stdin, answering ``started PID`` and, when it ends, ``exited PID CODE``
    on ``answers_fd``; returns once stdin is closed and every worker has exited."""
    # What a worker logs goes to the runner (Beam's logging service); on the terminal it shows
    # at the run's own level. Set before any import: a module's logging.warning() would
    # otherwise give the root logger a handler that prints every INFO line of the harness
    # (about 12 a worker, under --quiet as well).
    console = logging.StreamHandler()
    console.setLevel(log_level)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(console)
    for name in _EXPECTED:
        logging.getLogger(name).addFilter(_not_expected)
    from pipeline.beam_import import import_beam, no_collections

    # Ctrl-C during the start ends this process at once (the workers forked later keep Python's
    # own handling)
    with interrupt_ends_at_once():
        with no_collections():  # on the start's path: the workers are forked after these
            import_beam()  # the pipeline's steps only: Beam without its connectors
            from apache_beam.runners.worker import sdk_worker_main

            import pipeline.steps  # noqa: F401  (the DoFns the runner sends, unpickled here)

        if tokenizer:
            from transforms.samples.tokenize import load_tokenizer

            # kept in the module's cache, where the tokenize step's setup finds it, with the
            # per-token lookup tables that windowing needs (0.2-0.4 s: built once here, not in
            # every worker); a bad --tokenizer is the driver's to report, by flag
            with contextlib.suppress(Exception):
                tok = load_tokenizer(None if tokenizer == NO_SPEC else tokenizer, trust_remote_code)
                tok.newline_tables()

    answers = os.fdopen(answers_fd, "wb", buffering=0)

    def answer(line: bytes) -> None:
        with contextlib.suppress(OSError):  # the driver is gone: its workers end by themselves
            answers.write(line)

    children: set[int] = set()
    pending, reading = b"", True
    while reading or children:
        ready = select.select([0] if reading else [], [], [], 0.05)[0]
        if ready:
            chunk = os.read(0, 1 << 20)
            reading = bool(chunk)
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                pid = _fork_worker(json.loads(line), answers_fd, sdk_worker_main)
                children.add(pid)
                answer(b"started %d\n" % pid)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if not pid:
                break
            children.discard(pid)
            answer(b"exited %d %d\n" % (pid, os.waitstatus_to_exitcode(status)))
    return 0


def _fork_worker(env: dict, answers_fd: int, harness) -> int:
    """Fork one worker: in the child, Beam's environment and Beam's harness, then exit."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.close(answers_fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # the server's stdin is the pool's line from the driver
        os.close(devnull)
        os.environ.clear()
        os.environ.update(env)
        harness.main(sys.argv)
        code = 0
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        exit_now(code, forked=True)


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[2] not in ("0", "1"):
        sys.exit(
            "usage: python -m pipeline.worker_pool TOKENIZER 0|1 LEVEL FD (pipeline.run starts it)"
        )
    try:
        status = _serve(sys.argv[1], sys.argv[2] == "1", sys.argv[3], int(sys.argv[4]))
    except KeyboardInterrupt:
        sys.exit(130)
    # its workers have exited: no teardown of Beam and the tokenizer (~0.16 s on 2 cores, which
    # the driver's close() waited for after the summary)
    exit_now(status)
