"""benchmarks.ablation_train: the trainer's collation stacked per row, chunking, schedule."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.ablation_train import Cursor, collate_stack, cut_segments, lr_at
from train.data import IGNORE_INDEX

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def tiny_model():
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def token_losses(model, batch):
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], reduction="none"
    )
    return loss, batch["labels"][:, 1:] != IGNORE_INDEX


def test_cut_segments():
    lens = np.array([5, 3, 8])
    assert cut_segments(lens, 0, 4).tolist() == [4]
    assert cut_segments(lens, 4, 4).tolist() == [1, 3]
    assert cut_segments(lens, 8, 8).tolist() == [8]
    assert cut_segments(lens, 6, 10).tolist() == [2, 8]


def test_per_document_keeps_documents_apart_and_stream_does_not():
    model = tiny_model()
    rng = np.random.default_rng(0)
    a, b = rng.integers(1, 64, 20), rng.integers(1, 64, 12)
    alone = collate_stack(
        [{"input_ids": b, "seq_lengths": np.array([12])}],
        max_len=64,
        attention="per-document",
        pad_id=0,
    )
    row = {"input_ids": np.r_[a, b], "seq_lengths": np.array([20, 12])}
    short = {"input_ids": a[:7], "seq_lengths": np.array([7])}
    ref, _ = token_losses(model, alone)
    for attention, same in (("per-document", True), ("stream", False)):
        batch = collate_stack([row, short], max_len=64, attention=attention, pad_id=0)
        assert batch["input_ids"].shape == (2, 32)
        # padding of the short row continues its positions and is never scored
        assert batch["position_ids"][1, 7:].tolist() == list(range(7, 32))
        assert (batch["labels"][1, 7:] == IGNORE_INDEX).all()
        loss, scored = token_losses(model, batch)
        doc_b = loss[0, 20:]  # predictions of b1..b11
        assert scored[0, 19].item() is (attention == "stream")  # b0 from a's context
        close = torch.allclose(doc_b, ref[0], atol=1e-5)
        assert close is same


def test_schedule_and_cursor():
    assert lr_at(0, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10, 0.1) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    seq = Cursor(5, seed=3).take(12)
    assert sorted(seq[:5]) == list(range(5)) and sorted(seq[5:10]) == list(range(5))
    assert Cursor(5, seed=3, epoch=1, pos=2).take(5) == seq[7:12]
