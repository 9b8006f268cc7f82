"""`python -m train.launch` the way a user runs it, on CPU with the tiny random model: the
``--attention`` switch, ``--eval-data`` / ``--eval-steps`` (validation loss during training),
and the summary that records them.

The data: 40 paragraphs of a real book through the pipeline at 1024 tokens, so every row packs
several documents (a row of one document would look the same in both attention modes). The
validation split is written here (the pipeline's ``--eval-fraction`` is not in yet): the last two
rows of the train shard as ``shards/validation-00000-of-00001.arrow``, listed in the manifest
with ``"split": "validation"``."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from tests.conftest import cpu_train_args, packed_paragraphs, run_cli

torch = pytest.importorskip(
    "torch", reason="the training tests need the CPU build of torch (.[test])"
)


@pytest.fixture(scope="module")
def packed(tmp_path_factory, books_dir, qwen3_dir):
    root = tmp_path_factory.mktemp("launch")
    return packed_paragraphs(root, books_dir, qwen3_dir, seq_len=1024)


def add_validation_split(src, dst, rows: int = 2):
    """A copy of the output folder ``src`` whose manifest lists a validation shard: the last
    ``rows`` rows of its train shard (a real Arrow IPC stream, as the pipeline writes)."""
    import pyarrow as pa

    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    (train,) = manifest["shards"]
    table = pa.ipc.open_stream((dst / train["path"]).read_bytes()).read_all()
    held_out = table.slice(len(table) - rows)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, held_out.schema) as writer:
        writer.write_table(held_out)
    data = sink.getvalue().to_pybytes()
    path = "shards/validation-00000-of-00001.arrow"
    (dst / path).write_bytes(data)
    train["split"] = "train"
    manifest["shards"].append(
        {
            "path": path,
            "rows": rows,
            "tokens": sum(map(len, held_out.column("input_ids").to_pylist())),
            "sha256": hashlib.sha256(data).hexdigest(),
            "split": "validation",
        }
    )
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return dst


@pytest.fixture(scope="module")
def with_validation(packed, tmp_path_factory):
    out, model = packed
    return add_validation_split(out, tmp_path_factory.mktemp("val") / "out"), model


def cpu_args(out, model, run, steps: int) -> list:
    return cpu_train_args(out, model, run, steps, "--gradient-checkpointing", "false")


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


@pytest.mark.slow
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


def test_shards_of_a_split_by_field_then_by_name():
    from train.data import split_shards

    manifest = {
        "shards": [
            {"path": "shards/train-00000-of-00002.arrow", "split": "train"},
            {"path": "shards/validation-00000-of-00001.arrow", "split": "validation"},
            {"path": "shards/train-00001-of-00002.arrow"},  # no field: by the file name
            {"path": "shards/validation-00000-of-00001.parquet"},
        ]
    }
    assert [s["path"][7:] for s in split_shards(manifest, "train")] == [
        "train-00000-of-00002.arrow",
        "train-00001-of-00002.arrow",
    ]
    assert [s["path"][7:] for s in split_shards(manifest, "validation")] == [
        "validation-00000-of-00001.arrow",
        "validation-00000-of-00001.parquet",
    ]
    assert split_shards({"shards": manifest["shards"][:1]}, "validation") == []


def test_training_reads_the_train_split_only(with_validation):
    from train.data import load_shards, read_manifest

    out, _ = with_validation
    manifest = read_manifest(str(out))
    train = load_shards(str(out), manifest)
    held_out = load_shards(str(out), manifest, split="validation")
    assert len(train) == 8 and len(held_out) == 2
    assert held_out["input_ids"] == train["input_ids"][-2:]


def test_eval_data_without_a_validation_split_exits_2_before_loading(packed, tmp_path):
    out, model = packed
    run = tmp_path / "run"
    for extra in ([], ["--dry-run"]):
        proc = run_cli("train.launch", *cpu_args(out, model, run, 1), "--eval-data", out, *extra)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "no validation split" in proc.stderr and "--eval-fraction" in proc.stderr
        assert not run.exists()  # refused before any weights loaded
    proc = run_cli("train.launch", *cpu_args(out, model, run, 1), "--eval-steps", "2")
    assert proc.returncode == 2 and "--eval-steps needs --eval-data" in proc.stderr


def test_eval_data_of_another_tokenizer_or_length_is_refused(with_validation, packed, tmp_path):
    """--eval-data may be another folder: it is checked against --data before loading."""
    out, model = packed
    val, _ = with_validation
    proc = run_cli("train.launch", "--data", out, "--model", model, "--eval-data", val, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"eval      {val}: 2 validation samples" in proc.stdout
    assert "loss after the last step" in proc.stdout
    for key, value, message in (
        ("sha256", "0" * 64, "same --tokenizer"),
        ("seq_len", 2048, "truncated"),
    ):
        other = tmp_path / key
        shutil.copytree(val, other)
        manifest = json.loads((other / "manifest.json").read_text())
        if key == "sha256":
            manifest["tokenizer"]["sha256"] = value
        else:
            manifest[key] = value
        (other / "manifest.json").write_text(json.dumps(manifest))
        proc = run_cli(
            "train.launch", "--data", out, "--model", model, "--eval-data", other, "--dry-run"
        )
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


@pytest.mark.slow
def test_validation_loss_during_training_on_cpu(with_validation, tmp_path):
    """--eval-steps 2 over 3 steps: validation loss at steps 2 and 3 (the last) in the log
    history and train_summary.json, equal to the saved adapter's loss on the validation rows
    through the same collator; the plan trains on the 8 train rows only."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from train.data import PackedCollator, load_shards, read_manifest

    out, model = with_validation
    run = tmp_path / "run"
    args = cpu_args(out, model, run, 3)
    # the hand-made split duplicates train rows, which pipeline.validate rightly refuses
    args += ["--eval-data", out, "--eval-steps", "2", "--skip-validation", "true"]
    proc = run_cli("train.launch", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 samples of <= 1024 tokens" in proc.stdout
    assert (
        "2 validation samples" in proc.stdout and "every 2 steps and after the last" in proc.stdout
    )
    history = json.loads((run / "log_history.json").read_text())
    assert [h["step"] for h in history if "eval_loss" in h] == [2, 3]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["eval_data"] == str(out)
    assert [e["step"] for e in summary["eval_losses"]] == [2, 3]
    assert summary["eval_loss"] == summary["eval_losses"][-1]["loss"]
    # the time of both passes, the final one (after trainer.train()) included
    times = [h["eval_runtime"] for h in history if "eval_runtime" in h]
    assert len(times) == 2 and summary["eval_runtime_s"] == pytest.approx(sum(times), abs=0.02)
    base = AutoModelForCausalLM.from_pretrained(model, attn_implementation="sdpa")
    tuned = PeftModel.from_pretrained(base, run / "adapter").eval()
    collate = PackedCollator(1024, with_packed_lengths=False)
    rows = load_shards(str(out), read_manifest(str(out)), split="validation")
    with torch.no_grad():
        losses = [float(tuned(**collate([row]), use_cache=False).loss) for row in rows]
    assert summary["eval_loss"] == pytest.approx(sum(losses) / len(losses), abs=1e-4)


def _samples(out) -> int:
    return json.loads((out / "manifest.json").read_text())["counts"]["samples"]


def test_dry_run_prints_the_epoch_fraction_and_clamps(packed):
    """2 steps x 2 rows of the n samples: 4/n epochs; the default warmup of 5 and the
    accumulation that --tokens-per-step asks for (512 rows) are clamped, and the plan says so."""
    out, model = packed
    n = _samples(out)
    proc = run_cli("train.launch", "--data", out, "--model", model, "--max-steps", "2", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"accumulation {n} = {n * 1024} tokens/step; 2 steps, 2.00 epochs" in proc.stdout
    assert f"warning   gradient accumulation 512 is more than the {n} micro-batches" in proc.stdout
    assert "warning   --warmup-steps 5 is not shorter than the run's 2 steps" in proc.stdout
    args = ["--max-steps", "2", "--gradient-accumulation-steps", "2", "--warmup-steps", "1"]
    proc = run_cli("train.launch", "--data", out, "--model", model, *args, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"2 steps, {4 / n:.2f} epochs (4 of {n} samples); warmup 1" in proc.stdout
    assert "warning" not in proc.stdout


def test_dry_run_shows_the_rope_choice_and_its_source(packed, tmp_path):
    """A Qwen3 config past its window: YaRN from Qwen's model cards; a Llama without llama3
    scaling: Unsloth's linear rule; within the window nothing is scaled."""
    out, model = packed
    proc = run_cli("train.launch", "--data", out, "--model", model, "--dry-run")
    assert "RoPE auto: within the native window: no scaling" in proc.stdout
    assert "rope      " not in proc.stdout
    proc = run_cli(
        "train.launch", "--data", out, "--model", model, "--max-seq-length", "8192", "--dry-run"
    )
    assert proc.returncode == 0, proc.stderr
    assert "RoPE auto: linear, factor 2 = 8192/4096" in proc.stdout
    assert "rope      linear (source: no family recommendation: Unsloth's default" in proc.stdout
    qwen = tmp_path / "qwen3-shape"
    qwen.mkdir()
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(model_type="qwen3", architectures=["Qwen3ForCausalLM"])
    (qwen / "config.json").write_text(json.dumps(cfg))
    proc = run_cli(
        "train.launch", "--data", out, "--model", qwen, "--max-seq-length", "16384", "--dry-run"
    )
    assert proc.returncode == 0, proc.stderr
    assert "RoPE auto: YaRN, factor 4 = 16384/4096" in proc.stdout
    assert "rope      yarn (source: Qwen's model cards" in proc.stdout


def test_the_document_end_is_the_trainers_eos_and_pad(packed):
    """Qwen3's tokenizer says eos <|im_end|> (Unsloth sets the same); every document of the data
    ends with the manifest's <|endoftext|>. Training makes that token the tokenizer's eos and pad
    and the model's eos/pad ids, so nothing appends or pads with another."""
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.config import load_config
    from train.data import DataError, load_shards, read_manifest
    from train.model import use_document_end
    from train.preflight import build_plan

    out, model_dir = packed
    manifest = read_manifest(str(out))
    eot = manifest["tokenizer"]["end_of_text_id"]
    plan = build_plan(load_config(None, {"data": str(out), "model": str(model_dir)}), True)
    assert plan["document_end"] == {"token": "<|endoftext|>", "id": eot, "model_eos": "<|im_end|>"}
    for row in load_shards(str(out), manifest):  # every segment here is a whole document
        ends = np.cumsum(row["seq_lengths"]) - 1
        assert all(row["input_ids"][e] == eot for e in ends)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert tokenizer.eos_token_id == 151645  # <|im_end|>
    model.generation_config.eos_token_id = [151645]  # a chat model's stop id stays, second
    use_document_end(model, tokenizer, plan["document_end"])
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == eot == 151643
    assert model.config.eos_token_id == model.config.pad_token_id == eot
    assert model.generation_config.eos_token_id == [eot, 151645]
    with pytest.raises(DataError, match="re-run the pipeline with --tokenizer"):
        use_document_end(model, tokenizer, dict(plan["document_end"], id=151645))


def test_resume_refusals_before_loading(packed, tmp_path):
    out, model = packed
    run = tmp_path / "run"
    proc = run_cli(
        "train.launch", *cpu_args(out, model, run, 2), "--resume-from-checkpoint", "last"
    )
    assert proc.returncode == 2 and "no checkpoint-N folder" in proc.stderr, proc.stderr
    proc = run_cli("train.launch", *cpu_args(out, model, run, 2), "--resume-from-checkpoint", out)
    assert proc.returncode == 2 and "no trainer_state.json" in proc.stderr, proc.stderr
    assert not run.exists()


@pytest.mark.slow
def test_resume_from_checkpoint_on_cpu(packed, tmp_path):
    """A 4-step run checkpointed every 2 steps; a run stopped after its step-2 checkpoint (that
    folder alone in a new --output-dir) resumed with 'last' ends at step 4 with the same losses,
    the same adapter weights and the plan's epoch fraction; the tokenizer saved with the adapter
    ends documents the data's way."""
    from safetensors.torch import load_file

    out, model = packed
    ref, stopped = tmp_path / "ref", tmp_path / "stopped"
    extra = ["--save-steps", "2", "--learning-rate", "3e-3"]
    proc = run_cli("train.launch", *cpu_args(out, model, ref, 4), *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stopped.mkdir()
    shutil.copytree(ref / "checkpoint-2", stopped / "checkpoint-2")
    args = [*cpu_args(out, model, stopped, 4), *extra, "--resume-from-checkpoint", "last"]
    proc = run_cli("train.launch", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resume    from {stopped / 'checkpoint-2'} (step 2 of 4)" in proc.stdout
    summary = json.loads((stopped / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["resumed_at_step"] == 2
    # 4 steps of one row: 4 of the n samples, by the Trainer's count and by the plan's
    assert summary["epochs"] == summary["planned_epochs"] == round(4 / _samples(out), 4)
    losses = [json.loads((r / "log_history.json").read_text()) for r in (ref, stopped)]
    by_step = [{h["step"]: h["loss"] for h in log if "loss" in h} for log in losses]
    assert by_step[1][3] == pytest.approx(by_step[0][3], abs=1e-6)
    assert by_step[1][4] == pytest.approx(by_step[0][4], abs=1e-6)
    weights = [load_file(r / "adapter" / "adapter_model.safetensors") for r in (ref, stopped)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-6) for k in weights[0])
    tok = json.loads((stopped / "adapter" / "tokenizer_config.json").read_text())
    assert tok["eos_token"] == tok["pad_token"] == "<|endoftext|>"
