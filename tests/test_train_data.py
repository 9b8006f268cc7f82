"""The training data path on CPU: real shards, the collator, the launcher's refusals and a few
optimizer steps of a tiny random model; per-document loss inside a packed row equals alone."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.conftest import STDLIB, cpu_train_args, run_cli
from train.data import IGNORE_INDEX, DataError, collate_packed

torch = pytest.importorskip(
    "torch", reason="the training tests need the CPU build of torch (.[test])"
)


def test_collator_hand_made():
    b = collate_packed(
        [{"input_ids": [11, 12, 13, 21, 22, 31], "seq_lengths": [3, 2, 1]}], max_seq_length=8
    )
    assert b["input_ids"].tolist() == [[11, 12, 13, 21, 22, 31]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0]]
    assert b["labels"].tolist() == [[IGNORE_INDEX, 12, 13, IGNORE_INDEX, 22, IGNORE_INDEX]]
    assert b["packed_seq_lengths"].dtype == torch.int32 and b["packed_seq_lengths"].tolist() == [
        3,
        2,
        1,
    ]
    two = collate_packed(
        [{"input_ids": [1, 2], "seq_lengths": [2]}, {"input_ids": [3], "seq_lengths": [1]}],
        max_seq_length=2,
    )
    assert two["position_ids"].tolist() == [[0, 1, 0]] and two["packed_seq_lengths"].tolist() == [
        2,
        1,
    ]


def test_collator_stream_hand_made():
    """attention="stream": each row is one causal stream; rows of a micro-batch stay apart."""
    b = collate_packed(
        [{"input_ids": [11, 12, 13, 21, 22, 31], "seq_lengths": [3, 2, 1]}],
        max_seq_length=8,
        attention="stream",
    )
    assert b["input_ids"].tolist() == [[11, 12, 13, 21, 22, 31]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5]]
    assert b["labels"].tolist() == [[IGNORE_INDEX, 12, 13, 21, 22, 31]]
    assert b["packed_seq_lengths"].dtype == torch.int32
    assert b["packed_seq_lengths"].tolist() == [6]
    two = collate_packed(
        [
            {"input_ids": [1, 2, 3], "seq_lengths": [1, 2]},
            {"input_ids": [4, 5], "seq_lengths": [1, 1]},
        ],
        max_seq_length=3,
        attention="stream",
    )
    assert two["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert two["labels"].tolist() == [[IGNORE_INDEX, 2, 3, IGNORE_INDEX, 5]]
    assert two["packed_seq_lengths"].tolist() == [3, 2]
    with pytest.raises(ValueError, match="per-document"):
        collate_packed([{"input_ids": [1], "seq_lengths": [1]}], max_seq_length=1, attention="x")
    with pytest.raises(DataError, match="seq_lengths"):  # rows are still checked
        collate_packed(
            [{"input_ids": [1, 2], "seq_lengths": [1]}], max_seq_length=2, attention="stream"
        )


def test_collator_refuses_truncation_and_bad_rows():
    with pytest.raises(DataError, match="truncated"):
        collate_packed([{"input_ids": [1, 2, 3], "seq_lengths": [3]}], max_seq_length=2)
    with pytest.raises(DataError, match="seq_lengths"):
        collate_packed([{"input_ids": [1, 2, 3], "seq_lengths": [2]}], max_seq_length=8)


def test_collator_context_tokens_hand_made():
    """--overlap: a segment's leading context_tokens repeat the previous window and get no label
    (in both attention modes); a count that does not fit its segment is refused."""
    rows = [
        {"input_ids": [4, 5, 6, 7, 8, 9], "seq_lengths": [6], "context_tokens": [2]},
        {"input_ids": [1, 2, 3], "seq_lengths": [1, 2], "context_tokens": [0, 0]},
    ]
    X = IGNORE_INDEX
    expected = {
        "per-document": [X, X, 6, 7, 8, 9, X, X, 3],  # 1 and 2 start segments
        "stream": [X, X, 6, 7, 8, 9, X, 2, 3],  # 1 starts the second row's stream
    }
    for attention, labels in expected.items():
        b = collate_packed(rows, max_seq_length=8, attention=attention)
        assert b["labels"].tolist() == [labels]
    with pytest.raises(DataError, match="context_tokens"):
        collate_packed(
            [{"input_ids": [1, 2], "seq_lengths": [2], "context_tokens": [3]}], max_seq_length=2
        )


def test_overlap_tokens_are_learned_once_on_real_shards(tmp_path, books_dir, qwen3_dir):
    """A book windowed at 2048 tokens with --overlap 256: with the shards' context_tokens the
    tokens with a label are every distinct token of the document but its first (nothing to
    predict it from), each once; without them the 256 repeated tokens of every later window
    would be learned a second time."""
    import pyarrow as pa

    from train.data import load_shards, read_manifest

    out = tmp_path / "overlap"
    proc = run_cli(
        "pipeline.run",
        *("--runner", "DirectRunner", "--tokenizer", qwen3_dir, "--eval-fraction", "0"),
        *("--books", books_dir / "kafka-metamorphosis.txt", "--seq-len", "2048"),
        *("--overlap", "256", "--output", out),
    )
    assert proc.returncode == 0, proc.stderr
    rows = load_shards(str(out), read_manifest(str(out)))
    assert "context_tokens" in rows.column_names
    docs = pa.ipc.open_stream((out / "documents.arrow").read_bytes()).read_all()
    (n_tokens,) = docs.column("n_tokens").to_pylist()
    shard = pa.ipc.open_stream(next((out / "shards").glob("train-*")).read_bytes()).read_all()
    learned = []  # the document offsets of the tokens with a label
    for row, (start,) in zip(rows, shard.column("doc_starts").to_pylist(), strict=True):
        labels = collate_packed([row], max_seq_length=2048)["labels"][0]
        learned += [start + i for i in np.flatnonzero(labels.numpy() != IGNORE_INDEX)]
    assert sorted(learned) == list(range(1, n_tokens))  # each distinct token once
    windows = len(rows)
    assert windows > 5 and sum(sum(r["context_tokens"]) for r in rows) == 256 * (windows - 1)
    bare = [{"input_ids": r["input_ids"], "seq_lengths": r["seq_lengths"]} for r in rows]
    twice = sum(
        int((collate_packed([r], max_seq_length=2048)["labels"] != IGNORE_INDEX).sum())
        for r in bare
    )
    assert twice == len(learned) + 255 * (windows - 1)
    # an output made before the column existed: the plan warns
    from train.preflight import overlap_warning

    manifest = read_manifest(str(out))
    assert overlap_warning(str(out), manifest, manifest["shards"]) is None
    path = out / manifest["shards"][0]["path"]
    older = shard.drop_columns(["context_tokens"])
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, older.schema) as writer:
        writer.write_table(older)
    warning = overlap_warning(str(out), manifest, manifest["shards"])
    assert "--overlap 256" in warning and "learned twice" in warning


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, books_dir, qwen3_dir):
    root = tmp_path_factory.mktemp("train")
    out = root / "out"
    # short documents (paragraphs of a real book, as --documents JSONL) so that rows are packed
    paras = [
        p
        for p in (books_dir / "wells-the-time-machine.txt")
        .read_text(encoding="utf-8")
        .split("\n\n")
        if len(p) > 400
    ][:40]
    jsonl = root / "paragraphs.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "text": p}) + "\n" for i, p in enumerate(paras)))
    proc = run_cli(
        "pipeline.run",
        "--documents",
        jsonl,
        "--runner",
        "DirectRunner",
        "--books",
        books_dir / "kafka-metamorphosis.txt",
        "--books",
        books_dir / "gilman-the-yellow-wallpaper.txt",
        "--repos",
        STDLIB / "json",
        "--tokenizer",
        qwen3_dir,
        "--seq-len",
        "2048",
        "--output",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    from train.random_model import build

    model = build("tiny", str(qwen3_dir), str(root / "tiny"))
    return out, model


def test_collator_on_real_shards(tiny_setup):
    from train.data import PackedCollator, load_shards, read_manifest

    out, _ = tiny_setup
    ds = load_shards(str(out), read_manifest(str(out)))
    multi = next(r for r in ds if len(r["seq_lengths"]) > 1)
    b = PackedCollator(2048)([multi])
    starts = np.r_[0, np.cumsum(multi["seq_lengths"])[:-1]]
    assert (b["position_ids"][0, starts] == 0).all()
    assert (b["labels"][0, starts] == IGNORE_INDEX).all()
    assert int((b["labels"] == IGNORE_INDEX).sum()) == len(starts)


def test_packed_row_keeps_documents_apart_on_cpu(tiny_setup):
    """Plain transformers (SDPA): with attention="per-document" each document's loss inside a
    packed row equals its loss alone; with "stream" the first document's loss is unchanged and
    every later one changes, because the documents before it in the row are now its context."""
    from transformers import AutoModelForCausalLM

    from train.data import PackedCollator, load_shards, read_manifest

    out, model_dir = tiny_setup
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    ds = load_shards(str(out), read_manifest(str(out)))
    row = next(r for r in ds if len(r["seq_lengths"]) >= 2)

    def per_doc_losses(batch, lens):
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
            ).logits[0]
        ids = batch["input_ids"][0]
        lp = torch.log_softmax(logits[:-1].float(), -1).gather(1, ids[1:, None])[:, 0]
        res, s = [], 0
        for n in lens:
            res.append(float(-lp[s : s + n - 1].mean()))
            s += n
        return res

    lens = row["seq_lengths"]
    alone, s = [], 0
    for n in lens:
        one = {"input_ids": row["input_ids"][s : s + n], "seq_lengths": [n]}
        alone += per_doc_losses(collate_packed([one], max_seq_length=n), [n])
        s += n
    packed = per_doc_losses(PackedCollator(2048, attention="per-document")([row]), lens)
    assert np.allclose(packed, alone, atol=1e-4), (packed, alone)
    stream = per_doc_losses(PackedCollator(2048, attention="stream")([row]), lens)
    assert np.isclose(stream[0], alone[0], atol=1e-4)  # nothing precedes the first document
    for later_stream, later_alone in zip(stream[1:], alone[1:], strict=True):
        assert abs(later_stream - later_alone) > 1e-4, (stream, alone)


def test_launcher_dry_run_and_refusals(tiny_setup, tmp_path):
    out, model = tiny_setup
    proc = run_cli("train.launch", "--data", out, "--model", model, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert (
        "RoPE auto" in proc.stdout and "accumulation" in proc.stdout and "GiB peak" in proc.stdout
    )
    proc = run_cli("train.launch", "--data", tmp_path, "--model", model, "--dry-run")
    assert proc.returncode == 2 and "manifest.json" in proc.stderr
    proc = run_cli(
        "train.launch", "--data", out, "--model", model, "--max-seq-length", "1024", "--dry-run"
    )
    assert proc.returncode == 2 and "truncated" in proc.stderr
    proc = run_cli(
        "train.launch", "--data", out, "--model", model, "--gpu-memory-gib", "0.1", "--dry-run"
    )
    assert proc.returncode == 2 and "largest context" in proc.stderr
    cfg = json.loads((model / "config.json").read_text())
    small = tmp_path / "small-vocab"
    small.mkdir()
    (small / "config.json").write_text(json.dumps(dict(cfg, vocab_size=1000)))
    proc = run_cli("train.launch", "--data", out, "--model", small, "--dry-run")
    assert proc.returncode == 2 and "embedding" in proc.stderr


def _cpu_train_args(out, model, run, steps: int) -> list:
    return cpu_train_args(
        out, model, run, steps, "--learning-rate", "3e-3", "--gradient-checkpointing", "false"
    )


@pytest.mark.slow
def test_a_few_optimizer_steps_on_cpu(tiny_setup, tmp_path):
    out, model = tiny_setup
    run = tmp_path / "run"
    proc = run_cli("train.launch", *_cpu_train_args(out, model, run, 2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "train_summary.json").read_text())
    seq_len = json.loads((out / "manifest.json").read_text())["seq_len"]
    # exactly the two rows that trained (not the one the data loader fetched ahead)
    assert summary["steps"] == 2 and 2 * 1500 < summary["tokens"] <= 2 * seq_len
    assert (run / "adapter" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_two_process_data_parallel_on_cpu(tiny_setup, tmp_path):
    """--nproc-per-node 2 starts two ranks with torchrun (gloo on CPU): each trains on its
    share of the rows, the summary and adapter come from rank 0, tokens are summed."""
    out, model = tiny_setup
    run = tmp_path / "ddp"
    args = _cpu_train_args(out, model, run, 2)
    dry = run_cli("train.launch", *args, "--nproc-per-node", "2", "--dry-run")
    assert dry.returncode == 0 and "x 2 processes" in dry.stdout, dry.stdout
    proc = run_cli("train.launch", *args, "--nproc-per-node", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.distributed.run" in proc.stdout
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    # two ranks x two steps x one row each, summed over the ranks
    seq_len = json.loads((out / "manifest.json").read_text())["seq_len"]
    assert 4 * 1500 < summary["tokens"] <= 4 * seq_len
    assert (run / "adapter" / "adapter_config.json").is_file()


def test_dry_run_for_another_machine_warns_about_host_ram(tiny_setup, tmp_path):
    """A plan whose offloaded checkpoints exceed this machine's RAM: --dry-run (planning for
    another machine) warns; a real run, or a stated --host-memory-gib, refuses before loading."""
    out, model = tiny_setup
    big = tmp_path / "big-model"
    big.mkdir()
    cfg = json.loads((model / "config.json").read_text())
    # a 4096-wide, 64-layer shape: 64 x 32768 x 4096 x 2 B = 16 GiB of checkpoints per 32K row
    (big / "config.json").write_text(
        json.dumps(dict(cfg, hidden_size=4096, num_hidden_layers=64, intermediate_size=8192))
    )
    args = ["--data", out, "--model", big, "--max-seq-length", "32768"]
    proc = run_cli("train.launch", *args, "--gpu-memory-gib", "1000", "--dry-run",
                   "--host-memory-gib", "64")  # fmt: skip
    assert proc.returncode == 0 and "offload   checkpoints: 16.0 GiB" in proc.stdout, proc.stdout
    peak = float(re.search(r"~([0-9.]+) GiB peak", proc.stdout).group(1))
    # 8 GiB of host RAM hold none of the 64 layers beside its 16 GiB: all on a GPU with room
    proc = run_cli("train.launch", *args, "--gpu-memory-gib", "1000", "--dry-run",
                   "--host-memory-gib", "8")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "the first 64 of 64 layers keep theirs on the GPU (16.0 GiB)" in proc.stdout
    # a GPU with room for the peak but not for 16 GiB more: refused, naming the flag
    gpu = f"{(peak + 8) / 0.95:.1f}"
    proc = run_cli("train.launch", *args, "--gpu-memory-gib", gpu, "--dry-run",
                   "--host-memory-gib", "8")  # fmt: skip
    assert proc.returncode == 2 and "--host-memory-gib" in proc.stderr, proc.stderr
    assert "the 64 layers it cannot hold (16.0 GiB per GPU) do not fit" in proc.stderr
    # no --host-memory-gib: this machine's RAM; planning on it for a bigger one only warns
    (big / "config.json").write_text(
        json.dumps(dict(cfg, hidden_size=4096, num_hidden_layers=8192, intermediate_size=8192))
    )
    args = ["--data", out, "--model", big, "--max-seq-length", "262144"]
    proc = run_cli("train.launch", *args, "--gpu-memory-gib", "10000000", "--dry-run")
    assert proc.returncode == 0 and "warning   on this machine:" in proc.stdout, proc.stdout
    assert "host RAM not checked" in proc.stdout
