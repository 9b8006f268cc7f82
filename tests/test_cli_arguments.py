"""Bad arguments stop before any work with exit status 2 and a message naming the flag."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_cli


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--seq-len", "0"], "--seq-len"),
        (["--seq-len", "-5"], "--seq-len"),
        (["--seq-len", "abc"], "--seq-len"),
        (["--seq-len", "3"], "--seq-len must be at least 64"),
        (["--seq-len", "64", "--overlap", "64"], "--overlap"),
        (["--overlap", "-1"], "--overlap"),
        (["--tokenizer", "/no/such/tokenizer.json"], "--tokenizer"),
        (["--format", "csv"], "--format"),
        (["--mix", "book=0.5,code"], "--mix"),
        (["--mix", "book=-1"], "--mix"),
        (["--mix", "poems=1"], "--mix: unknown kind poems"),
        (["--mix", "book=1"], "--mix asks for book"),  # demo corpus is code only
        (["--boundary-slack", "-1"], "--boundary-slack"),
        (["--min-dependency-score", "high"], "--min-dependency-score"),
        # Beam itself only logs and drops these: the run would go on at the default length,
        # or without the second book
        (["--fill-gaps", "--overlap", "100"], "--fill-gaps"),
        (["--seq-lenn", "4096"], "unknown flag --seq-lenn"),
        (["--seq", "8192"], "unknown flag --seq (did you mean --seq-len?)"),
        (["--seq_len", "4096"], "unknown flag --seq_len"),
        # the misspelt flag is named, not --overlap against the default --seq-len it left
        (["--seq_len", "131072", "--overlap", "65536"], "unknown flag --seq_len"),
        (["--books", "a.txt", "b.txt"], "unexpected argument 'b.txt'"),
    ],
)
def test_bad_arguments_exit_2(tmp_path, args, needle):
    out = tmp_path / "out"
    proc = run_cli("pipeline.run", "--runner", "DirectRunner", "--output", out, *args)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "run.py" not in proc.stderr and "usage:" not in proc.stderr  # one line, our name
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--books", "/no/such/books"], "--books /no/such/books: no such file or folder"),
        (["--repos", "/no/such/repo"], "--repos /no/such/repo: no such file or folder"),
        (["--documents", "/no/such.jsonl"], "--documents /no/such.jsonl: no such file"),
    ],
)
def test_missing_input_exits_3_before_writing(tmp_path, args, needle):
    out = tmp_path / "out"
    proc = run_cli("pipeline.run", "--runner", "DirectRunner", "--output", out, *args)
    assert proc.returncode == 3, proc.stderr
    assert needle in proc.stderr
    assert not out.exists()


def test_finished_output_needs_overwrite(tmp_path, books_dir):
    out = tmp_path / "out"
    book = books_dir / "gilman-the-yellow-wallpaper.txt"
    base = ["--runner", "DirectRunner", "--books", book, "--seq-len", "4096", "--output", out]
    assert run_cli("pipeline.run", *base).returncode == 0
    proc = run_cli("pipeline.run", *base)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    proc = run_cli("pipeline.run", *base, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["documents"] == 1 and m["tokenizer"]["name"] == "bundled:qwen3"


def test_bad_inputs_are_rejects_and_the_run_completes(tmp_path, books_dir):
    books = tmp_path / "books"
    books.mkdir()
    (books / "good.txt").write_text(
        (books_dir / "kafka-metamorphosis.txt").read_text(encoding="utf-8")
    )
    (books / "empty.txt").write_text("")
    (books / "binary.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(4000))
    (books / "latin.md").write_bytes("caf\u00e9 cr\u00e8me ".encode("latin-1") * 100)
    (books / "cover.jpg").write_bytes(b"\xff\xd8\xff" + bytes(100))
    out = tmp_path / "out"
    proc = run_cli(
        "pipeline.run",
        "--runner",
        "DirectRunner",
        "--books",
        books,
        "--seq-len",
        "8192",
        "--output",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    rejects = {
        json.loads(line)["path"].rsplit("/", 1)[-1]: json.loads(line)["reason"]
        for line in (out / "rejects.jsonl").read_text().splitlines()
    }
    assert rejects == {
        "empty.txt": "empty",
        "binary.txt": "binary",
        "latin.md": "undecodable",
        "cover.jpg": "unsupported_type",
    }
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["documents"] == 1 and m["counts"]["rejects"] == 4


def test_help_lists_every_flag_by_group_with_defaults():
    from dataclasses import fields

    from pipeline.config import BuildConfig
    from schemas.settings import flag_of

    proc = run_cli("pipeline.run", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m pipeline.run")
    for f in fields(BuildConfig):
        assert flag_of(f) in proc.stdout, flag_of(f)
    for group in ("inputs:", "tokenization:", "samples:", "output:", "run and logging:"):
        assert group in proc.stdout
    assert "(default 65536)" in proc.stdout  # --seq-len
    assert "(default True)" not in proc.stdout and "(default False)" not in proc.stdout


def test_misspelt_flag_and_yaml_key_suggest_the_nearest(tmp_path):
    proc = run_cli("pipeline.run", "--runner", "DirectRunner", "--seq-lenn", "4096")
    assert proc.returncode == 2 and "did you mean --seq-len?" in proc.stderr, proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("eval-fractoin: 0.1\n")
    proc = run_cli("pipeline.run", "--config", bad, "--output", tmp_path / "o")
    assert proc.returncode == 2 and "did you mean eval_fraction?" in proc.stderr, proc.stderr


def test_unreachable_hub_tokenizer_fails_at_once_with_what_to_do(tmp_path):
    """Offline, a Hub id used to take 23-50 s of transformers' retries before failing."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = dict(os.environ, PYTHONPATH=str(REPO), HF_ENDPOINT="https://127.0.0.1:9")
    env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "--runner", "DirectRunner"]
        + ["--tokenizer", "someone/not-cached-here", "--output", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,  # fails the test if it goes back to retrying
    )
    assert proc.returncode == 2, proc.stderr
    assert "--tokenizer someone/not-cached-here: not in the Hugging Face cache" in proc.stderr
    assert "pass a local path" in proc.stderr and "HF_HUB_OFFLINE=1" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--seq-len", "abc"],
        ["--format", "csv"],
        ["--seq-len", "10"],
        ["--seq-len", "64", "--overlap", "64"],
        ["--mix", "book=1,poetry=1"],
        ["--eval-fraction", "1"],
    ],
)
def test_help_and_bad_values_import_no_beam(args):
    """``--help`` and a bad value answer before Apache Beam is imported (about 0.9 s of the
    start-up, issue 20): a top-level Beam import in the command line's modules fails this, and
    so does a value check (``--seq-len 10``, ``--overlap`` past ``--seq-len``, an unknown
    ``--mix`` kind) left behind the Beam import."""
    code = (
        "import sys\n"
        "from pipeline.run import run\n"
        f"status = run({args!r})\n"
        "print('beam imported' if 'apache_beam' in sys.modules else 'no beam', status)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-3:] == ["no", "beam", "0" if args == ["--help"] else "2"]


EXIT_NOW = """
import atexit, os, sys, threading, time
from pipeline.errors import exit_now

folder = sys.argv[1]

class Teardown:  # collected only when the interpreter tears its modules down
    def __del__(self, mark=os.open, path=folder + "/teardown", flags=os.O_CREAT | os.O_WRONLY):
        mark(path, flags)

kept = Teardown()
atexit.register(lambda: open(folder + "/atexit", "w").close())

def late_writer():
    time.sleep(0.3)
    open(folder + "/thread", "w").close()

threading.Thread(target=late_writer).start()  # not a daemon: the exit waits for it
sys.stdout.write("summary line, no newline")  # buffered in a pipe
exit_now(int(sys.argv[2]))
"""


def test_exit_now_keeps_the_exit_status_output_threads_and_handlers_but_skips_teardown(tmp_path):
    """The driver's fast exit (``pipeline.errors.exit_now``): what the interpreter's exit does
    before its teardown still happens, the teardown (0.25 s once Beam is loaded) does not."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_NOW, str(tmp_path), "7"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == "summary line, no newline"
    assert (tmp_path / "thread").exists() and (tmp_path / "atexit").exists()
    assert not (tmp_path / "teardown").exists()


def test_exit_now_says_when_the_summary_could_not_be_written(tmp_path):
    """A reader gone from stdout (``| head``, a closed log pipe): the interpreter's exit prints
    the error and exits 120, not 0; so does the fast exit."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    read, write = os.pipe()
    os.close(read)  # nobody will read what the process writes
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_NOW, str(tmp_path), "0"],
        cwd=REPO,
        env=env,
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    os.close(write)
    assert proc.returncode == 120, proc.stderr
    assert "Broken pipe" in proc.stderr or "BrokenPipeError" in proc.stderr, proc.stderr


FORKED = """
import os, sys
from pipeline.errors import exit_now

folder = sys.argv[1]
sys.settrace(lambda *args: None)  # as under coverage or a debugger
pid = os.fork()
if pid == 0:
    try:
        exit_now(3, forked=True)
    finally:
        open(folder + "/unwound", "w").close()  # the parent's code: never run by the child
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_worker_ends_where_it_exits_even_under_a_tracer(tmp_path):
    """A pooled worker is forked from the pool's server: under a tracer the plain exit would
    raise SystemExit into the server's own code in the child; ``forked=True`` never does."""
    proc = subprocess.run(
        [sys.executable, "-c", FORKED, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "3"
    assert not (tmp_path / "unwound").exists()
