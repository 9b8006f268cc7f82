"""The README's "own notebook" example runs as written, on a real output and a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import BOOKS, REPO, run_cli

pytestmark = pytest.mark.slow


def test_notebook_training_example_trains_on_the_shards(tmp_path, qwen3_dir):
    out = tmp_path / "out"
    book = BOOKS / "gilman-the-yellow-wallpaper.txt"
    proc = run_cli(
        "pipeline.run",
        "--runner",
        "DirectRunner",
        "--books",
        book,
        "--tokenizer",
        qwen3_dir,
        "--seq-len",
        "2048",
        "--overlap",
        "128",
        "--output",
        out,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = tmp_path / "model"
    proc = run_cli(
        "train.random_model", "--shape", "tiny", "--tokenizer", qwen3_dir, "--out", model
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "notebook_training.py"), str(out), str(model)]
        + ["--steps", "2", "--output-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["steps"] == 2 and result["loss"] > 0
