"""train.evaluate on real shards (pyarrow, the shard schema), real books, a real byte-level BPE
(trained here by train.tokenizer: a 2,048-id vocabulary keeps the CPU LM head 75x cheaper than
Qwen3's) and a tiny random model: exact metrics on hand-made losses, losses equal to a plain
forward pass, per-document scoring, the CLI and its refusals.

Validation shards are written here in the shard schema (``schemas/columns.py``) with a manifest
that marks their split, as ``pipeline.run --eval-fraction`` does."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import run_cli
from train.eval_metrics import (
    EvalError,
    Segment,
    TokenScorer,
    far_loss,
    key_token_loss,
    passkey_prompt,
    per_position_loss,
    position_buckets,
    read_segments,
    select_documents,
    validation_shards,
)

torch = pytest.importorskip("torch", reason="train.evaluate needs the CPU build of torch (.[test])")

CONTRACT_KEYS = {"per_position_loss", "context_gain", "passkey", "key_token_loss", "order_signal"}


def write_output(root, samples, *, seq_len, tok, name="validation-00000-of-00001.arrow"):
    """A finished output folder holding one shard; ``samples`` are rows of (doc_id, start, ids)."""
    from schemas.columns import SAMPLE_SCHEMA

    (root / "shards").mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "input_ids": [np.concatenate([ids for _, _, ids in row]) for row in samples],
            "seq_lengths": [[len(ids) for _, _, ids in row] for row in samples],
            "doc_ids": [[d for d, _, _ in row] for row in samples],
            "doc_starts": [[s for _, s, _ in row] for row in samples],
            "n_tokens": [sum(len(ids) for _, _, ids in row) for row in samples],
            "dependency_score": [None] * len(samples),
            "context_tokens": [[0] * len(row) for row in samples],
        },
        schema=SAMPLE_SCHEMA,
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, SAMPLE_SCHEMA) as writer:
        writer.write_table(table)
    data = sink.getvalue().to_pybytes()
    (root / "shards" / name).write_bytes(data)
    split = "validation" if name.startswith("validation") else "train"
    manifest = {
        "seq_len": seq_len,
        "tokenizer": tok.describe(),
        "shards": [
            {
                "path": f"shards/{name}",
                "rows": len(samples),
                "tokens": int(sum(table.column("n_tokens").to_pylist())),
                "sha256": hashlib.sha256(data).hexdigest(),
                "split": split,
            }
        ],
        "validation_doc_ids": sorted({d for row in samples for d, _, _ in row}),
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


# ------------------------------------------------------------ exact, no model


def test_position_buckets_double_up_to_seq_len():
    assert position_buckets(2048) == [(0, 128), (128, 256), (256, 512), (512, 1024), (1024, 2048)]
    assert position_buckets(600) == [(0, 128), (128, 256), (256, 512), (512, 600)]
    assert position_buckets(100) == [(0, 100)]


def test_per_position_loss_and_far_loss_by_hand():
    # segment a: 301 tokens -> losses at positions 1..300 (1.0); segment b: positions 1..100 (3.0)
    losses = [np.full(300, 1.0, np.float32), np.full(100, 3.0, np.float32)]
    rows = per_position_loss(losses, 512)
    assert [(r["start"], r["end"], r["tokens"]) for r in rows] == [
        (0, 128, 227),
        (128, 256, 128),
        (256, 512, 45),
    ]
    assert rows[0]["loss"] == pytest.approx((127 * 1.0 + 100 * 3.0) / 227)
    assert rows[1]["loss"] == 1.0 and sum(r["tokens"] for r in rows) == 400
    ramp = [np.arange(1, 301, dtype=np.float32)]  # loss = position
    assert far_loss(ramp, 256) == (pytest.approx(np.mean(np.arange(256, 301))), 45)
    assert far_loss([np.ones(10, np.float32)], 256) == (None, 0)


def test_key_token_loss_by_hand():
    full = np.array([1.0, 1.0, 0.5, 4.0])
    truncated = np.array([3.5, 2.9, 0.5, 6.1])  # drops: 2.5, 1.9, 0, 2.1
    k = key_token_loss(full, truncated, 2.0)
    assert k["share"] == 0.5 and k["key_tokens"] == 2 and k["tokens"] == 4
    assert k["loss_full"] == pytest.approx(2.5) and k["loss_truncated"] == pytest.approx(4.8)
    assert key_token_loss(full, full, 2.0)["loss_full"] is None


def test_segments_from_shard_table(tmp_path, bpe_loaded):
    # token values say where they come from: 1x = doc a, 2x = doc b, 3x = doc c
    rows = [
        [("a", 0, np.array([11, 12, 13], np.int32)), ("b", 0, np.array([21, 22], np.int32))],
        [("c", 4096, np.array([31, 32, 33, 34], np.int32))],
    ]
    out = write_output(tmp_path / "o", rows, seq_len=8, tok=bpe_loaded)
    segs = read_segments(
        validation_shards(str(out), json.loads((out / "manifest.json").read_text()))
    )
    assert [(s.doc_id, s.doc_start, s.ids.tolist()) for s in segs] == [
        ("a", 0, [11, 12, 13]),
        ("b", 0, [21, 22]),
        ("c", 4096, [31, 32, 33, 34]),
    ]
    two = [
        Segment("a", 0, np.arange(5)),
        Segment("b", 0, np.arange(5)),
        Segment("a", 5, np.arange(3)),
    ]
    assert [s.doc_id for s in select_documents(two, 6)] == ["a", "a"]  # whole documents
    assert select_documents(two, None) == two


def test_validation_shards_by_split_then_prefix(tmp_path, bpe_loaded):
    row = [[("a", 0, np.arange(4, dtype=np.int32))]]
    out = write_output(tmp_path / "v", row, seq_len=8, tok=bpe_loaded)
    manifest = json.loads((out / "manifest.json").read_text())
    assert validation_shards(str(out), manifest) == [out / "shards/validation-00000-of-00001.arrow"]
    for s in manifest["shards"]:
        s.pop("split")  # an output from before --eval-fraction: the file name decides
    assert validation_shards(str(out), manifest)[0].name.startswith("validation-")
    train_only = write_output(
        tmp_path / "t", row, seq_len=8, tok=bpe_loaded, name="train-00000-of-00001.arrow"
    )
    with pytest.raises(EvalError, match="--eval-fraction 0.05"):
        validation_shards(str(train_only), json.loads((train_only / "manifest.json").read_text()))


def test_passkey_prompt_is_exact_and_places_the_needle(bpe):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bpe)

    def encode(t):
        return tok.encode(t, add_special_tokens=False)

    needle = encode(" The pass key is 71432.")
    for depth in (0.0, 0.5, 1.0):
        ids, n_answer = passkey_prompt(encode, 400, depth, 71432)
        assert len(ids) == 400 and ids[-n_answer:].tolist() == encode(" 71432")
        at = next(i for i in range(400) if ids[i : i + len(needle)].tolist() == needle)
        prompt = " The pass key is 71432. Remember it. 71432 is the pass key."
        prompt += " What is the pass key? The pass key is"
        filler = 400 - len(encode(prompt)) - n_answer
        assert abs(at - depth * filler) <= 8, (depth, at, filler)  # a sentence start near the depth
    assert tok.decode(ids).endswith("The pass key is 71432")
    with pytest.raises(EvalError, match="--passkey-lengths 20"):
        passkey_prompt(encode, 20, 0.5, 71432)


# ------------------------------------------------------------ a real tiny model


@pytest.fixture(scope="module")
def bpe(tmp_path_factory, books_dir):
    from train.tokenizer import save_tokenizer, train_tokenizer

    names = ("kafka-metamorphosis.txt", "gilman-the-yellow-wallpaper.txt")
    tok, _ = train_tokenizer([str(books_dir / n) for n in names], 2048)
    return save_tokenizer(tok, tmp_path_factory.mktemp("bpe") / "bpe2k")


@pytest.fixture(scope="module")
def bpe_loaded(bpe):
    from transforms.samples.tokenize import load_tokenizer  # as pipeline.run --tokenizer loads it

    return load_tokenizer(str(bpe))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, bpe):
    from transformers import AutoModelForCausalLM

    from train.random_model import build

    path = build("tiny", str(bpe), str(tmp_path_factory.mktemp("eval") / "tiny"))
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
    return path, model


@pytest.fixture(scope="module")
def book_ids(bpe_loaded, books_dir):
    tok = bpe_loaded

    def ids(name: str) -> np.ndarray:
        text = (books_dir / name).read_text(encoding="utf-8")
        return np.asarray(tok.tokenizer.encode(text).ids + [tok.end_of_text_id], np.int32)

    return ids("kafka-metamorphosis.txt"), ids("gilman-the-yellow-wallpaper.txt")


def plain_losses(model, ids: np.ndarray) -> np.ndarray:
    """The reference: one sequence, full logits, log_softmax."""
    x = torch.as_tensor(ids, dtype=torch.long)[None]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
    return -logp.gather(1, x[0, 1:, None])[:, 0].numpy()


def test_batched_chunked_scores_equal_one_plain_forward_each(tiny, book_ids):
    """Rows of different lengths padded into one batch, logits in chunks that cross rows."""
    _, model = tiny
    kafka, _ = book_ids
    seqs = [kafka[:300], kafka[1000:1077], kafka[5000:5002], kafka[7000:7190]]
    scorer = TokenScorer(model, torch.device("cpu"), batch_tokens=4096, logit_elements=100 * 2048)
    assert len(scorer._batches([len(s) for s in seqs])) == 1 and scorer.chunk == 100
    for seq, (loss, argmax) in zip(seqs, scorer.score_with_argmax(seqs), strict=True):
        ref = plain_losses(model, seq)
        assert loss.shape == ref.shape == argmax.shape
        np.testing.assert_allclose(loss, ref, rtol=0, atol=2e-5)


def test_a_document_scores_the_same_with_another_packed_before_it(
    tmp_path, tiny, book_ids, bpe_loaded
):
    _, model = tiny
    kafka, gilman = book_ids
    x, y = gilman[:400], kafka[:300]
    alone = write_output(tmp_path / "alone", [[("x", 0, x)]], seq_len=1024, tok=bpe_loaded)
    packed = write_output(
        tmp_path / "packed", [[("y", 0, y), ("x", 0, x)]], seq_len=1024, tok=bpe_loaded
    )
    scorer = TokenScorer(model, torch.device("cpu"), batch_tokens=1024, logit_elements=2**24)

    def x_losses(out):
        segs = read_segments(
            validation_shards(str(out), json.loads((out / "manifest.json").read_text()))
        )
        losses = scorer.score([s.ids for s in segs])
        return next(x for x, s in zip(losses, segs, strict=True) if s.doc_id == "x")

    np.testing.assert_allclose(x_losses(packed), x_losses(alone), rtol=0, atol=2e-5)
    # the same row read as one causal stream gives x other losses: the test can fail
    stream = plain_losses(model, np.concatenate([y, x]))[len(y) :]
    assert np.abs(stream - x_losses(alone)).max() > 1e-3


def test_context_gain_equals_direct_truncation(tiny, book_ids):
    from train.eval_metrics import context_gain

    _, model = tiny
    kafka, _ = book_ids
    seg = Segment("k", 0, kafka[:1024])
    scorer = TokenScorer(model, torch.device("cpu"), batch_tokens=4096, logit_elements=2**24)
    full = scorer.score([seg.ids])
    rows, key = context_gain(
        scorer, [seg], full, seq_len=1024, k=128, contexts=[256, 64], margin=0.01
    )
    assert [r["context"] for r in rows] == [64, 256] and key["context"] == 64
    ref_full = plain_losses(model, seg.ids)[-128:]
    for r in rows:
        ref = plain_losses(model, seg.ids[-(128 + r["context"]) :])[-128:]
        assert r["tokens"] == 128
        assert r["loss_full"] == pytest.approx(ref_full.mean(), abs=1e-5)
        assert r["loss_truncated"] == pytest.approx(ref.mean(), abs=1e-5)
    short = Segment("s", 0, kafka[:500])  # < seq_len/2: not scored
    rows, _ = context_gain(
        scorer, [short], [full[0][:499]], seq_len=1024, k=128, contexts=[64], margin=2.0
    )
    assert rows[0]["tokens"] == 0 and rows[0]["loss_full"] is None


def test_teacher_forced_argmax_is_greedy_decoding(tiny, book_ids):
    """passkey accuracy's claim: all answer tokens argmax under teacher forcing <=> greedy
    decoding reproduces them. Greedy's own continuation must score as a hit."""
    _, model = tiny
    kafka, _ = book_ids
    prompt = torch.as_tensor(kafka[:200], dtype=torch.long)[None]
    greedy = model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)[0].numpy()
    scorer = TokenScorer(model, torch.device("cpu"), batch_tokens=4096, logit_elements=2**24)
    _, argmax = scorer.score_with_argmax([greedy])[0]
    assert (argmax[-4:] == greedy[-4:]).all()
    other = greedy.copy()
    other[-1] = (other[-1] + 1) % 1000
    assert not (scorer.score_with_argmax([other])[0][1][-4:] == other[-4:]).all()


def test_rope_scaling_flag_widens_the_window(tiny):
    from train.evaluate import load_model, model_context, rope_override
    from train.plan import read_model_shape

    path, _ = tiny
    shape = read_model_shape(str(path))
    assert model_context(shape) == 4096 and rope_override(shape, 4096, "auto") is None
    rope = rope_override(shape, 8192, "auto")  # Unsloth's rule past the window: linear
    assert rope == {"rope": {"rope_type": "linear", "factor": 2.0}, "max_position_embeddings": 8192}
    scaled = load_model(str(path), None, torch.device("cpu"), rope).model.rotary_emb.inv_freq
    plain = load_model(str(path), None, torch.device("cpu"), None).model.rotary_emb.inv_freq
    assert torch.allclose(scaled, plain / 2)
    llama31 = dict(shape.__dict__, max_position_embeddings=131072)
    llama31["rope_scaling"] = {
        "rope_type": "llama3",
        "factor": 8.0,
        "original_max_position_embeddings": 8192,
    }
    assert model_context(type(shape)(**llama31)) == 131072


def test_adapter_is_merged_into_the_model(tiny, tmp_path, book_ids):
    """--adapter: the merged model scores exactly as the PEFT model it came from."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from train.evaluate import load_model

    path, plain = tiny
    base = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")
    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft = get_peft_model(base, cfg).eval()  # random A and B: the adapter changes the outputs
    peft.save_pretrained(tmp_path / "adapter")
    merged = load_model(str(path), str(tmp_path / "adapter"), torch.device("cpu"), None)
    ids = book_ids[0][:200]
    np.testing.assert_allclose(plain_losses(merged, ids), plain_losses(peft, ids), atol=1e-4)
    assert np.abs(plain_losses(merged, ids) - plain_losses(plain, ids)).max() > 1e-3


# ------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory, book_ids, bpe_loaded):
    """seq_len 1024: four full-length windows of a book, and a row packing a short piece after
    another (the same tokens as a user's --eval-fraction output would carry)."""
    kafka, gilman = book_ids
    root = tmp_path_factory.mktemp("evaldata")
    rows = [[("book/kafka", s, kafka[s : s + 1024])] for s in range(0, 4096, 1024)]
    rows.append([("book/gilman", 0, gilman[:700]), ("book/gilman-2", 0, gilman[2000:2300])])
    return write_output(root / "out", rows, seq_len=1024, tok=bpe_loaded)


@pytest.mark.slow
def test_cli_writes_every_metric_and_plot(tmp_path, tiny, eval_data):
    model, _ = tiny
    out = tmp_path / "eval"
    args = ["--model", model, "--data", eval_data, "--seq-len", "1024", "--out", out]
    args += ["--compare-data", eval_data, "--passkey-lengths", "256,512", "--passkey-trials", "1"]
    proc = run_cli("train.evaluate", *args, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "eval.json").read_text())
    assert result.keys() >= CONTRACT_KEYS
    recorded = {"model", "adapter", "data", "seq_len", "tokens_scored", "device", "date"}
    assert recorded | {"elapsed_s"} <= result.keys()
    assert result["tokens_scored"] == 4 * 1023 + 699 + 299
    assert sum(b["tokens"] for b in result["per_position_loss"]) == result["tokens_scored"]
    assert [b["end"] for b in result["per_position_loss"]] == [128, 256, 512, 1024]
    assert all(set(b) >= {"start", "end", "tokens", "loss"} for b in result["per_position_loss"])
    # K = 1024/8 = 128; C = 256 only (512 - 128 = 384 is the room); 5 segments >= 512 tokens
    assert [(g["context"], g["tokens"]) for g in result["context_gain"]] == [(256, 5 * 128)]
    assert set(result["key_token_loss"]) >= {"margin", "share", "loss_full", "loss_truncated"}
    assert [(p["length"], p["depth"], p["trials"]) for p in result["passkey"]] == [
        (n, d, 1) for n in (256, 512) for d in (0.0, 0.25, 0.5, 0.75, 1.0)
    ]
    signal = result["order_signal"]
    # the same documents scored twice: equal up to the CPU kernels' last bits (CI once saw 6.6e-9;
    # the model's losses are ~7.6, and a wrong pairing of segments moves them by far more)
    assert signal["difference"] == pytest.approx(0.0, abs=1e-6)
    assert signal["far_loss_project"] == pytest.approx(signal["far_loss_baseline"], abs=1e-6)
    assert signal["tokens_project"] == 4 * 512 + 188  # positions >= 512 of the 1024s and the 700
    for name in ("per_position_loss.png", "context_gain.png", "passkey.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "per_position_loss.png" in (out / "eval.html").read_text()


@pytest.mark.slow
def test_cli_on_a_pipeline_output_with_eval_fraction(tmp_path, tiny, bpe, books_dir):
    """The user's path: pipeline.run --eval-fraction, then train.evaluate on its output."""
    model, _ = tiny
    data = tmp_path / "out"
    proc = run_cli(
        "pipeline.run", "--runner", "DirectRunner",
        "--books", books_dir / "kafka-metamorphosis.txt",
        "--books", books_dir / "gilman-the-yellow-wallpaper.txt",
        "--tokenizer", bpe, "--seq-len", "2048", "--eval-fraction", "0.5", "--output", data,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((data / "manifest.json").read_text())
    held_out = manifest["validation_doc_ids"]
    assert len(held_out) == 1
    # what must be scored, read straight from the validation shards
    expected = 0
    for entry in manifest["shards"]:
        if entry["split"] == "validation":
            table = pa.ipc.open_stream((data / entry["path"]).read_bytes()).read_all()
            assert set(table.column("doc_ids").combine_chunks().flatten().to_pylist()) == set(
                held_out
            )
            lengths = table.column("seq_lengths").combine_chunks().flatten().to_pylist()
            expected += sum(n - 1 for n in lengths)
    out = tmp_path / "eval"
    proc = run_cli(
        "train.evaluate", "--model", model, "--data", data, "--seq-len", "2048", "--out", out,
        "--passkey-lengths", "512", "--passkey-trials", "1", "--device", "cpu",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "eval.json").read_text())
    assert CONTRACT_KEYS - {"order_signal"} <= result.keys() and result["documents"] == 1
    assert result["tokens_scored"] == expected > 0
    assert sum(b["tokens"] for b in result["per_position_loss"]) == expected
    assert (out / "per_position_loss.png").is_file() and (out / "eval.html").is_file()


def test_cli_refuses_bad_input_naming_the_flag(
    tmp_path, tiny, eval_data, book_ids, bpe_loaded, qwen3
):
    model, _ = tiny

    def refuse(*args):
        proc = run_cli("train.evaluate", "--out", tmp_path / "e", *map(str, args))
        assert proc.returncode == 2, proc.stderr
        assert not (tmp_path / "e").exists()
        return proc.stderr

    train_only = write_output(
        tmp_path / "t", [[("a", 0, book_ids[0][:64])]], seq_len=1024, tok=bpe_loaded, name="train-00000-of-00001.arrow"
    )  # fmt: skip
    err = refuse("--model", model, "--data", train_only)
    assert "--data" in err and "--eval-fraction 0.05" in err
    small = tmp_path / "small-vocab"
    small.mkdir()
    cfg = json.loads((model / "config.json").read_text())
    (small / "config.json").write_text(json.dumps(dict(cfg, vocab_size=1000)))
    assert "--model" in refuse("--model", small, "--data", eval_data)
    # data tokenized with Qwen3 (151,669 ids) against the 2,048-id model
    qwen_data = write_output(
        tmp_path / "q", [[("a", 0, book_ids[0][:64])]], seq_len=1024, tok=qwen3
    )
    err = refuse("--model", model, "--data", qwen_data)
    assert "--model" in err and "151669" in err
    err = refuse("--model", model, "--data", eval_data, "--seq-len", "8192")
    assert "--seq-len 8192" in err and "4096" in err  # the tiny shape's window
    assert "--seq-len 512" in refuse("--model", model, "--data", eval_data, "--seq-len", "512")
    assert "--model" in refuse("--model", tmp_path / "nowhere", "--data", eval_data)
    assert "--data" in refuse("--model", model, "--data", tmp_path / "nowhere")
    assert "--adapter" in refuse("--model", model, "--adapter", tmp_path, "--data", eval_data)
    base = ["--model", model, "--data", eval_data]
    assert "--compare-data" in refuse(*base, "--compare-data", tmp_path)
    err = refuse(*base, "--compare-data", train_only)
    assert "--compare-data" in err and "--eval-fraction 0.05" in err
    assert "--passkey-lengths" in refuse(*base, "--passkey-lengths", "8192")
    assert "--gain-contexts 512" in refuse(*base, "--gain-contexts", "512")  # >= 1024/2 - 128
    assert "--rope-scaling dynamic" in refuse(
        *base, "--seq-len", "8192", "--rope-scaling", "dynamic"
    )
