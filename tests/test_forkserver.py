"""The suite's fork server (``tests/forkserver.py``): a command run in a child forked from it
gives what a new interpreter gives (status, stdout, stderr, the working folder and environment
of the call), and a run whose environment a new interpreter would read at its start goes to a
plain subprocess."""

from __future__ import annotations

import os
import re

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
    finally:
        server.close()


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
    assert Server().takes(env) is forked
