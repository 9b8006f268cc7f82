"""The suite's fork server (``tests/forkserver.py``): a command run in a child forked from it
gives what a new interpreter gives (status, stdout, stderr, the working folder and environment
of the call), and a run whose environment a new interpreter would read at its start goes to a
plain subprocess."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from tests import conftest, forkserver
from tests.conftest import REPO, run_cli


def _both(monkeypatch, module: str, *args, cwd=None):
    forked = run_cli(module, *args, cwd=cwd)
    monkeypatch.setenv(forkserver.SWITCH, "0")
    plain = run_cli(module, *args, cwd=cwd)
    monkeypatch.delenv(forkserver.SWITCH)
    return forked, plain


def test_a_forked_run_gives_what_a_new_interpreter_gives(
    monkeypatch, tmp_path, books_dir, qwen3_dir
):
    # a refused flag (status 2, argparse's message), a run with a relative output folder (the
    # call's working folder) and its summary on stdout
    forked, plain = _both(monkeypatch, "pipeline.run", "--seq-len", "-5")
    assert forked.returncode == plain.returncode == 2
    assert forked.stderr == plain.stderr and "--seq-len" in forked.stderr
    book = min(books_dir.glob("*.txt"), key=lambda p: p.stat().st_size)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / book.name).write_bytes(book.read_bytes())
    outs = []
    for switch in ("1", "0"):
        monkeypatch.setenv(forkserver.SWITCH, switch)
        out = f"out{switch}"
        proc = run_cli("pipeline.run", "--runner", "DirectRunner", "--books", "in",
                       "--tokenizer", qwen3_dir, "--output", out, cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(
            (
                re.sub(r" in [0-9.]+s:", "", proc.stdout.replace(out, "OUT")),
                (tmp_path / out / "manifest.json").exists(),
            )
        )
    assert outs[0] == outs[1] and outs[0][1]
    assert "pipeline" in conftest._FORK_SERVERS  # run_cli went through it


def test_the_folder_and_environment_of_the_call_reach_the_forked_run(monkeypatch, tmp_path):
    """The call's working folder (first on sys.path, as with ``python -m``), TMPDIR and the
    run's own variables as the call has them, not as the server started."""
    server = forkserver.ForkServer(REPO, "pipeline")
    try:
        (tmp_path / "show").mkdir()
        (tmp_path / "show" / "__main__.py").write_text(
            "import os, sys, tempfile\n"
            "print(os.environ['LONGCTX_TEST_MARK'], tempfile.gettempdir(), sys.argv[1:],\n"
            "      os.getppid())\n"
            "sys.exit(3)\n"
        )
        env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(tmp_path))
        proc = server.run("show", ["a", "b"], tmp_path, dict(env, LONGCTX_TEST_MARK="yes"), 60)
        assert proc.returncode == 3, proc.stderr
        assert proc.stdout.split() == ["yes", str(tmp_path), "['a',", "'b']", str(server.proc.pid)]
        proc = server.run("show", [], tmp_path, dict(env, LONGCTX_TEST_MARK="no"), 60)
        assert proc.stdout.split()[0] == "no"
        proc = server.run("show", [], REPO, env, 60)  # not on the path from another folder
        assert proc.returncode == 1 and "No module named show" in proc.stderr
        # the run's own __main__: its names do not reach the server's exit, and a file left
        # open at module level is flushed as the interpreter's end would
        (tmp_path / "leave").mkdir()
        (tmp_path / "leave" / "__main__.py").write_text(
            "f = open('left.txt', 'w')\nf.write('data')\n_exit = _status = None\n"
        )
        proc = server.run("leave", [], tmp_path, env, 60)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "left.txt").read_text() == "data"
    finally:
        server.close()


def test_a_server_ends_with_the_process_that_started_it(tmp_path):
    """A pytest worker killed (no atexit) leaves no server holding Beam behind."""
    code = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from tests.forkserver import ForkServer\n"
        f"server = ForkServer(__import__('pathlib').Path({str(REPO)!r}), 'pipeline')\n"
        "print(server.proc.pid, server.folder, flush=True)\n"
        "time.sleep(600)\n"
    )
    client = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    folder = ""
    try:
        pid, folder = client.stdout.readline().split()
        client.kill()
        client.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(int(pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(int(pid))
    finally:
        client.kill()
        if folder:
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    ("change", "forked"),
    [
        ({}, True),
        ({"TMPDIR": "/elsewhere"}, True),
        ({"PYTHONHASHSEED": "7"}, False),
        ({"MALLOC_ARENA_MAX": "2"}, False),
        ({"OMP_NUM_THREADS": "99"}, False),
    ],  # fmt: skip
)
def test_what_a_new_interpreter_reads_at_its_start_goes_to_a_subprocess(change, forked):
    class Server(forkserver.ForkServer):
        def __init__(self):  # no process: only what it was started with
            self.env = {"PATH": "/bin", "OMP_NUM_THREADS": "1"}

    env = dict(Server().env, **change)
    assert Server().takes(env, REPO) is forked
    assert not Server().takes(env, REPO / "no-such-folder")  # subprocess raises, as it would
