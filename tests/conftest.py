"""Shared fixtures: the real books, the real Qwen3 tokenizer, real standard-library code."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LONGCTX_SHARED_DATA", REPO.parent / "shared" / "data"))
BOOKS = SHARED / "books"
QWEN3 = SHARED / "tokenizers" / "qwen3"
STDLIB = Path(sysconfig.get_paths()["stdlib"])


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


def run_cli(module: str, *args: str, cwd: Path | None = None, timeout: int = 900):
    """Run ``python -m module args`` the way a user does; returns CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=env,
        timeout=timeout,
    )
