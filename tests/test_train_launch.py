"""`python -m train.launch` the way a user runs it, on CPU with the tiny random model: the
``--attention`` switch and the summary that records it.

The data: 40 paragraphs of a real book through the pipeline at 1024 tokens, so every row packs
several documents (a row of one document would look the same in both attention modes)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

pytest.importorskip("torch", reason="the training tests need the CPU build of torch (.[test])")


@pytest.fixture(scope="module")
def packed(tmp_path_factory, books_dir, qwen3_dir):
    root = tmp_path_factory.mktemp("launch")
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
        "1024",
        "--output",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    from train.random_model import build

    return out, build("tiny", str(qwen3_dir), str(root / "tiny"))


def cpu_args(out, model, run, steps: int) -> list:
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
        "1",
        "--gradient-checkpointing",
        "false",
        "--warmup-steps",
        "0",
        "--output-dir",
        run,
    ]


def test_every_row_packs_several_documents(packed):
    from train.data import load_shards, read_manifest

    out, _ = packed
    rows = load_shards(str(out), read_manifest(str(out)))
    assert len(rows) >= 4 and all(len(r["seq_lengths"]) >= 2 for r in rows)


def test_attention_in_the_plan_and_refused_values(packed, tmp_path):
    out, model = packed
    proc = run_cli("train.launch", "--data", out, "--model", model, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "attention per-document: positions restart at every document" in proc.stdout
    yaml_file = tmp_path / "stream.yaml"
    yaml_file.write_text(f"data: {out}\nmodel: {model}\nattention: stream\n")
    proc = run_cli("train.launch", "--config", yaml_file, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "attention stream: for ablations" in proc.stdout
    proc = run_cli("train.launch", "--data", out, "--model", model, "--attention", "causal")
    assert proc.returncode == 2 and "--attention causal" in proc.stderr, proc.stderr
    assert "per-document or stream" in proc.stderr


def test_attention_stream_reaches_the_model_on_cpu(packed, tmp_path):
    """The first step's loss is computed before any update, on the same seeded row: it differs
    between the modes only if the collator really built one stream (or the flag did nothing)."""
    out, model = packed
    first = {}
    for mode in ("per-document", "stream"):
        run = tmp_path / mode
        proc = run_cli("train.launch", *cpu_args(out, model, run, 1), "--attention", mode)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"attention {mode}:" in proc.stdout
        summary = json.loads((run / "train_summary.json").read_text())
        assert summary["attention"] == mode and summary["steps"] == 1
        first[mode] = summary["first_loss"]
    assert abs(first["stream"] - first["per-document"]) > 1e-5, first
