"""`python -m train.export` on CPU (the PEFT path) with the tiny random model: the merged model's
logits equal the adapter model's, and its config.json carries the run's RoPE scaling and the
data's document end.

The data: one small real book through the pipeline at 2048 tokens. The tiny model's native
window is set to 1024, so the run scales RoPE (linear, factor 2: a Llama without llama3 scaling)
and the rows' positions run past the native window."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

torch = pytest.importorskip(
    "torch", reason="the training tests need the CPU build of torch (.[test])"
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, books_dir, qwen3_dir):
    """(data, base model, run folder): one optimizer step of the tiny model on the book."""
    root = tmp_path_factory.mktemp("export")
    out = root / "out"
    proc = run_cli(
        "pipeline.run",
        "--runner",
        "DirectRunner",
        "--books",
        books_dir / "kafka-metamorphosis.txt",
        "--tokenizer",
        qwen3_dir,
        "--seq-len",
        "2048",
        "--eval-fraction",
        "0",
        "--output",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    from train.random_model import build

    base = build("tiny", str(qwen3_dir), str(root / "tiny-1k"), max_position_embeddings=1024)
    run = root / "run"
    proc = run_cli(
        "train.launch",
        *("--data", out, "--model", base, "--backend", "transformers", "--output-dir", run),
        *("--max-steps", "1", "--gradient-accumulation-steps", "1", "--warmup-steps", "0"),
        *("--gradient-checkpointing", "false", "--learning-rate", "3e-3"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RoPE auto: linear, factor 2 = 2048/1024" in proc.stdout
    return out, base, run


def _logits(model, row) -> torch.Tensor:
    ids = torch.tensor([row["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits[0]


@pytest.mark.slow
def test_export_merges_the_adapter_with_peft_on_cpu(trained, tmp_path):
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from train.data import load_shards, read_manifest
    from train.model import apply_rope

    out, base, run = trained
    merged = tmp_path / "merged"
    proc = run_cli("train.export", "--adapter", run / "adapter", "--out", merged)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = json.loads(proc.stdout.split("exported ", 1)[1])
    assert written["backend"] == "peft" and written["dtype"] == "float32"
    settings = json.loads((run / "adapter" / "longctx_training.json").read_text())
    rope = settings["rope"]["config"]
    assert rope["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    config = json.loads((merged / "config.json").read_text())
    scaling = config.get("rope_parameters") or config["rope_scaling"]
    assert scaling["rope_type"] == "linear" and scaling["factor"] == 2.0
    assert config["max_position_embeddings"] == 1024  # vLLM: 1024 x 2 = the trained 2048
    eot = read_manifest(str(out))["tokenizer"]["end_of_text_id"]
    assert config["eos_token_id"] == config["pad_token_id"] == eot
    generation = json.loads((merged / "generation_config.json").read_text())
    assert generation["eos_token_id"] == eot
    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == eot
    # the adapter over its base, with the RoPE the run trained with, against the merged model
    base_config = AutoConfig.from_pretrained(base)
    apply_rope(base_config, rope)
    adapted = AutoModelForCausalLM.from_pretrained(base, config=base_config)
    adapted = PeftModel.from_pretrained(adapted, run / "adapter").eval()
    one = AutoModelForCausalLM.from_pretrained(merged).eval()
    row = load_shards(str(out), read_manifest(str(out)))[0]
    assert len(row["input_ids"]) > 1024  # positions past the native window
    expected = _logits(adapted, row)
    assert torch.allclose(_logits(one, row), expected, atol=1e-4)
    plain = AutoModelForCausalLM.from_pretrained(base).eval()  # no adapter, no scaling
    assert (_logits(plain, row) - expected).abs().max() > 1e-3


@pytest.mark.slow
def test_export_merged_16bit_and_refusals(trained, tmp_path):
    from transformers import AutoModelForCausalLM

    _, _, run = trained
    merged = tmp_path / "bf16"
    proc = run_cli("train.export", "--adapter", run / "adapter", "--out", merged, "--merged-16bit")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"dtype": "bfloat16"' in proc.stdout
    assert AutoModelForCausalLM.from_pretrained(merged).dtype == torch.bfloat16
    proc = run_cli("train.export", "--adapter", run / "adapter", "--out", merged)
    assert proc.returncode == 2 and "not an empty folder" in proc.stderr, proc.stderr
    proc = run_cli("train.export", "--adapter", run, "--out", tmp_path / "x")
    assert proc.returncode == 2 and "no adapter_config.json" in proc.stderr, proc.stderr
    assert not (tmp_path / "x").exists()


def test_yarn_settings_round_trip_through_config_json(tmp_path):
    """What a Qwen3 run past its window writes: YaRN over the card's 32,768, with
    max_position_embeddings = original x factor (transformers' consistency check; vLLM's window),
    read back by transformers as YaRN with its attention scaling."""
    import math

    from transformers import AutoConfig, Qwen3Config

    from train.model import apply_rope
    from train.plan import ModelShape, plan_rope

    config = Qwen3Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=40960,
        rope_theta=1_000_000.0,
    )
    plan = plan_rope(ModelShape.from_config_dict(config.to_dict()), 131072)
    assert plan.method == "yarn" and "Qwen" in plan.source
    apply_rope(config, plan.config)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    rope = getattr(loaded, "rope_parameters", None) or loaded.rope_scaling
    assert rope["rope_type"] == "yarn" and rope["factor"] == 4.0
    assert rope["original_max_position_embeddings"] == 32768
    assert loaded.max_position_embeddings == 131072 == 32768 * rope["factor"]
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    _, attention_scaling = ROPE_INIT_FUNCTIONS["yarn"](loaded, "cpu")
    assert attention_scaling == pytest.approx(0.1 * math.log(4.0) + 1.0)
