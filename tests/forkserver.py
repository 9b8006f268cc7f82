"""A fork server for the suite's command-line runs of ``python -m pipeline.run``.

Each test that runs the pipeline as a user does (``tests.conftest.run_cli``) paid a new
interpreter's start and its imports (Apache Beam alone ~1.5 s of a ~2.5 s run of a small book)
before the run began (training's ~4.5 s: torch, transformers, peft); the suite is ~200 such
runs on a CI machine of 2 cores. Here a server
process (one for the pipeline's commands, one for training's: ``GROUPS``) imports them once for
a pytest process (Beam as the command line's driver imports it), and each run is a child forked from it: a process of its own, with the test's
working folder, environment, arguments and its own stdout and stderr (files, read back as
``subprocess.run(capture_output=True, text=True)`` would), run as ``python -m`` runs a module,
its exit status the child's. What a new interpreter does differently, and where the run goes to
a plain subprocess instead:

- the modules are imported before the run: a test that checks what a driver imports, or how
  long it takes, starts its own interpreter (``subprocess`` or ``run_patched``), not
  ``run_cli``;
- what Python or the C library read at a process's start (``PYTHON*``, ``MALLOC_*``, ``LD_*``)
  or what is read at import (``LONGCTX_LEAN_BEAM``) can only be the server's: a run whose
  environment differs there goes to a plain subprocess (``_NEEDS_A_NEW_INTERPRETER``);
- nothing is parsed or started in the server (no tokenizer, no thread of Beam's): a child
  forked from it starts them, as a new process would;
- every child has the server's seed for ``hash()`` of strings, where each new interpreter
  draws its own: a test that compares two runs' bytes runs one of them in a new interpreter
  (``LONGCTX_TEST_FORKSERVER=0``), or a result that hangs on the order of a set would not
  show.

A server ends with the pytest process that started it (it checks every second).

``LONGCTX_TEST_FORKSERVER=0`` runs every command in a plain subprocess."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SWITCH = "LONGCTX_TEST_FORKSERVER"
# a server for each group: its modules are run in children forked from it, which it imports
# first (not the modules themselves: ``python -m`` runs one as __main__ only). Training apart:
# the pipeline's runs have no torch imported, as a user's
GROUPS = {
    "pipeline": (
        ("pipeline.run", "pipeline.validate", "pipeline.count_tokens", "pipeline.inspect"),
        (
            "pipeline.job",
            "pipeline.steps",
            "pipeline.output",
            "pipeline.report",
            "apache_beam.runners.direct.direct_runner",
            "apache_beam.runners.portability.fn_api_runner.fn_runner",
            "transforms.samples.tokenize",
            "tokenizers",
            "pyarrow",
            "numpy",
        ),
    ),
    "train": (
        ("train.launch", "train.evaluate", "train.export", "train.random_model", "train.tokenizer"),
        ("torch", "transformers", "peft", "datasets", "train.model", "train.trainer", "train.data"),
    ),
}
MODULES = {module: group for group, (modules, _) in GROUPS.items() for module in modules}
# what is read at a process's start or at an import (Python, the C library, OpenMP, torch, the
# Hugging Face libraries, Beam's lean import)
_NEEDS_A_NEW_INTERPRETER = ("PYTHON", "MALLOC_", "LD_", "OMP_", "MKL_", "KMP_", "TORCH",
                            "HF_", "TRANSFORMERS_", "TOKENIZERS_", "LONGCTX_LEAN_BEAM",
                            "LONGCTX_BEAM_MEMO")  # fmt: skip


def _differs_at_start(env: dict, server_env: dict) -> bool:
    keys = {k for k in (*env, *server_env) if k.upper().startswith(_NEEDS_A_NEW_INTERPRETER)}
    return any(env.get(k) != server_env.get(k) for k in keys)


class ForkServer:
    """The client's side: one server for this process, started at the first run."""

    def __init__(self, repo: Path, group: str):
        self.repo, self.group = repo, group
        self.folder = Path(tempfile.mkdtemp(prefix="longctx-forkserver-"))
        self.path = str(self.folder / "socket")
        self.env = dict(os.environ, PYTHONPATH=str(repo))
        self.proc = subprocess.Popen(
            [sys.executable, __file__, self.path, group],
            cwd=repo,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "server.log", "wb"),  # noqa: SIM115 - the server's own
        )
        atexit.register(self.close)
        deadline = time.monotonic() + 120
        while not os.path.exists(self.path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.folder / "server.log").read_text(errors="replace")
                raise RuntimeError(f"the test fork server did not start:\n{log[-3000:]}")
            time.sleep(0.02)

    def close(self) -> None:
        atexit.unregister(self.close)
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)

    def takes(self, env: dict, cwd) -> bool:
        """Whether a run with ``env`` in the folder ``cwd`` can be forked from this server (a
        folder that is not there: ``subprocess`` raises, as it would)."""
        return os.path.isdir(cwd) and not _differs_at_start(env, self.env)

    def run(self, module: str, args, cwd, env: dict, timeout: float):
        """As ``subprocess.run([python, -m, module, *args], capture_output=True, text=True,
        cwd=cwd, env=env, timeout=timeout)``."""
        fd, out = tempfile.mkstemp(dir=self.folder, suffix=".out")
        os.close(fd)
        fd, err = tempfile.mkstemp(dir=self.folder, suffix=".err")
        os.close(fd)
        request = {
            "module": module,
            "args": [str(a) for a in args],
            "cwd": str(cwd),
            "env": env,
            "stdout": out,
            "stderr": err,
        }
        cmd = [sys.executable, "-m", module, *request["args"]]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.connect(self.path)
                conn.sendall(json.dumps(request).encode() + b"\n")
                reply = conn.makefile("r")
                pid = int(reply.readline())
                conn.settimeout(timeout)
                try:
                    line = reply.readline()
                except BaseException as stop:  # the child goes too, as subprocess.run's
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    if isinstance(stop, TimeoutError):
                        raise subprocess.TimeoutExpired(
                            cmd, timeout, _read(out), _read(err)
                        ) from None
                    raise
                if not line:
                    raise RuntimeError(f"the test fork server ended during a run of {module}")
                code = int(line)
            return subprocess.CompletedProcess(cmd, code, _read(out), _read(err))
        finally:
            os.unlink(out)
            os.unlink(err)


def _read(path: str) -> str:
    with open(path) as f:  # as text=True decodes: the locale's encoding, universal newlines
        return f.read()


# ---- the server's side ------------------------------------------------------------------------


def _serve(path: str, group: str) -> None:
    import importlib

    if group == "pipeline":  # as the command line's driver imports Beam
        from pipeline.beam_import import import_beam, no_collections

        with no_collections():
            import_beam()
    for name in GROUPS[group][1]:
        importlib.import_module(name)
    client = os.getppid()  # gone (the pytest process killed): the server goes too
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(16)
    listener.settimeout(1.0)
    os.rename(path + ".tmp", path)  # the client waits for the name: bound and listening
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    open_conns: set[socket.socket] = set()
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            if os.getppid() != client:
                os._exit(0)
            continue
        conn.settimeout(None)
        request = json.loads(conn.makefile("r").readline())
        sys.stdout.flush(), sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            for sock in (listener, conn, *list(open_conns)):  # a new process has none of them
                sock.close()
            _child(request)  # never returns
        conn.sendall(f"{pid}\n".encode())
        # the run's end is waited for in a thread: the next request (a test that starts two
        # runs at once, one holding the output's lock) is forked meanwhile
        open_conns.add(conn)
        threading.Thread(target=_report, args=(conn, pid, open_conns), daemon=True).start()


def _report(conn: socket.socket, pid: int, open_conns: set) -> None:
    _, status = os.waitpid(pid, 0)
    open_conns.discard(conn)
    with conn:
        conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())


def _child(request: dict) -> None:
    """Become ``python -m MODULE ARGS`` with the request's streams, folder and environment, in
    a ``__main__`` of its own; end with its exit status (a KeyboardInterrupt: killed by
    SIGINT, as the interpreter ends then)."""
    import runpy
    import traceback
    import types

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    exit_, status = _exit, _status  # the server's, whatever the run defines
    main = types.ModuleType("__main__")
    code = 1
    try:
        for fd, name, mode in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY),
                               (2, request["stderr"], os.O_WRONLY)):  # fmt: skip
            target = os.open(name, mode)
            os.dup2(target, fd)
            os.close(target)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        tempfile.tempdir = None  # TMPDIR as the request's environment has it
        sys.path[0] = os.getcwd()  # as with ``python -m`` (the server's is its script's folder)
        sys.argv = [request["module"], *request["args"]]
        sys.modules["__main__"] = main
        runpy._run_module_as_main(request["module"])  # as ``python -m`` runs it
        code = 0
    except SystemExit as stop:
        code = status(stop.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:  # noqa: BLE001 - as the interpreter reports an uncaught one
        traceback.print_exc()
        code = 1
    main.__dict__.clear()  # the run's module-level objects end (an open file is flushed)
    exit_(code)


def _status(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _exit(code: int) -> None:
    """The interpreter's exit: the other threads waited for, the exit handlers, the streams
    (a negative ``code``: killed by that signal)."""
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            code = code or 120
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2])
