"""Shared fixtures: the real books, the real Qwen3 tokenizer, real standard-library code."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests import forkserver

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LONGCTX_SHARED_DATA", REPO.parent / "shared" / "data"))
BOOKS = SHARED / "books"
QWEN3 = SHARED / "tokenizers" / "qwen3"
STDLIB = Path(sysconfig.get_paths()["stdlib"])

# The suite runs one xdist worker per core, and a CPU training test's torch takes a thread per
# core: two at once oversubscribe the cores, and OpenMP's waiting threads spin. Two 4-step CPU
# trainings side by side on 2 cores took 21.7 s each with the default and 9.8 s with one thread
# each. Each test process, and the processes it starts, gets cores // workers threads (a value
# already set wins).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))


@pytest.fixture(scope="session")
def books_dir() -> Path:
    assert BOOKS.is_dir(), f"test data missing: {BOOKS} (set LONGCTX_SHARED_DATA)"
    return BOOKS


@pytest.fixture(scope="session")
def qwen3_dir() -> Path:
    assert (QWEN3 / "tokenizer.json").is_file(), f"test data missing: {QWEN3}"
    return QWEN3


@pytest.fixture(scope="session")
def qwen3(qwen3_dir):
    from transforms.samples.tokenize import load_tokenizer

    return load_tokenizer(str(qwen3_dir))


_FORK_SERVERS: dict[str, forkserver.ForkServer] = {}  # by group


def run_cli(module: str, *args: str, cwd: Path | None = None, timeout: int = 900):
    """Run ``python -m module args`` the way a user does; returns CompletedProcess. A run of
    the pipeline is a child of this process's fork server (``tests/forkserver.py``)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    group = forkserver.MODULES.get(module)
    if group and os.environ.get(forkserver.SWITCH) != "0":
        if group not in _FORK_SERVERS:
            _FORK_SERVERS[group] = forkserver.ForkServer(REPO, group)
        if _FORK_SERVERS[group].takes(env, cwd or REPO):
            return _FORK_SERVERS[group].run(module, args, cwd or REPO, env, timeout)
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=env,
        timeout=timeout,
    )


def run_patched(prepare: str, argv, report: str, timeout: int = 600, **env: str):
    """``pipeline.run.run(argv)``, a whole run as a user's, in a new interpreter after
    ``prepare`` (code that patches what the test watches); ``report`` runs once it returns,
    with ``status`` bound, and prints what the test reads from stdout. ``env``: variables set
    for it. Returns the CompletedProcess."""
    code = "\n".join(
        [
            "import sys",
            prepare,
            "from pipeline.run import run",
            "status = run(sys.argv[1:])",
            report,
        ]
    )
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), **env),
        timeout=timeout,
    )


def two_workers_on_json(tokenizer, out) -> list[str]:
    """Flags of a small multi_processing run: 2 workers, the standard library's json."""
    return ["--runner", "DirectRunner", "--direct_running_mode", "multi_processing",
            "--direct_num_workers", "2", "--repos", str(STDLIB / "json"), "--tokenizer",
            str(tokenizer), "--seq-len", "4096", "--output", str(out), "--quiet"]  # fmt: skip


def cpu_train_args(out, model, run, steps: int, *extra: str, accumulation: int = 1) -> list:
    """``train.launch`` flags of a short CPU run (transformers backend, no warmup) of ``steps``
    optimizer steps of ``accumulation`` rows from ``out`` into ``run``, then ``extra``."""
    return [
        "--data",
        out,
        "--model",
        model,
        "--backend",
        "transformers",
        "--max-steps",
        str(steps),
        "--gradient-accumulation-steps",
        str(accumulation),
        "--warmup-steps",
        "0",
        "--output-dir",
        run,
        *extra,
    ]


def packed_paragraphs(root: Path, books_dir: Path, qwen3_dir: Path, seq_len: int):
    """40 paragraphs of a real book, one JSONL record each, through the pipeline at
    ``seq_len`` (rows pack several documents), and the tiny random model with Qwen3's
    vocabulary: ``(output folder, model folder)`` under ``root``, for the CPU training tests."""
    import json

    from train.random_model import build

    text = (books_dir / "wells-the-time-machine.txt").read_text(encoding="utf-8")
    paras = [p for p in text.split("\n\n") if len(p) > 400][:40]
    jsonl = root / "paragraphs.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "text": p}) + "\n" for i, p in enumerate(paras)))
    out = root / "out"
    proc = run_cli(
        "pipeline.run",
        "--documents",
        jsonl,
        "--runner",
        "DirectRunner",
        "--tokenizer",
        qwen3_dir,
        "--seq-len",
        str(seq_len),
        "--output",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    return out, build("tiny", str(qwen3_dir), str(root / "tiny"))
