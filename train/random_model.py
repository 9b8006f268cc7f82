"""Build a random-initialised model of a real shape, saved with a tokenizer, for offline runs.

    python -m train.random_model --shape llama-3.2-1b --tokenizer ../shared/data/tokenizers/qwen3 --out models/l1b
    python -m train.random_model --shape llama-150m --tokenizer tokenizers/bpe16k --out models/l150m

For smoke tests and memory/speed measurements where no model hub is reachable: the memory and
speed of a training step depend on the shape, not on the weights. The embedding is sized to the
tokenizer (rounded up to a multiple of 128).

From-scratch shapes (untied embeddings, native window 32768, rope_theta 500000; parameters with
a 16,384-token vocabulary, e.g. from ``python -m train.tokenizer``):

    llama-150m   hidden 768, 12 layers, 12 heads, MLP 2048   110M (85M in the layers)
    llama-50m    hidden 512, 10 layers,  8 heads, MLP 1408    49M (32M in the layers)

``qwen3-8b`` is Qwen3-8B's shape (a Qwen3ForCausalLM: QK-norm attention, 36 layers, untied
embeddings, 8.19B parameters with Qwen3's vocabulary); ``qwen3-tiny`` the same family for tests.

``--max-position-embeddings`` and ``--rope-theta`` override a shape's values (e.g. a 1-2K stage-1
pretraining window with a smaller theta); ``--num-layers`` its depth, widths kept (e.g. the 8B
shape with 8 layers, whose offloaded checkpoints a 126 GiB host holds at 524,288 tokens where the
full 32 layers' 128 GiB do not: ``benchmarks/one_gpu.sh``).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 32.0,
    "original_max_position_embeddings": 8192,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
}
SHAPES = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        tie_word_embeddings=True,
    ),
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling=LLAMA3_ROPE,
        tie_word_embeddings=True,
    ),
    "llama-3.1-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling=dict(LLAMA3_ROPE, factor=8.0),
        tie_word_embeddings=False,
    ),
    # Qwen3-8B's published config (QK-norm attention: Qwen3ForCausalLM), for its memory and speed
    "qwen3-8b": dict(
        model_type="qwen3",
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    ),
    "qwen3-tiny": dict(
        model_type="qwen3",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
    ),
    "llama-150m": dict(
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=32768,
        rope_theta=500000.0,
        tie_word_embeddings=False,
    ),
    "llama-50m": dict(
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=10,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=32768,
        rope_theta=500000.0,
        tie_word_embeddings=False,
    ),
}


def build(
    shape: str,
    tokenizer_dir: str,
    out: str,
    seed: int = 0,
    *,
    max_position_embeddings: int | None = None,
    rope_theta: float | None = None,
    num_layers: int | None = None,
) -> Path:
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tok_dir = Path(tokenizer_dir)
    vocab = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab_size(
        with_added_tokens=True
    )
    values = dict(SHAPES[shape])
    if max_position_embeddings is not None:
        values["max_position_embeddings"] = max_position_embeddings
    if rope_theta is not None:
        values["rope_theta"] = rope_theta
    if num_layers is not None:
        if num_layers < 1:
            raise ValueError(f"--num-layers {num_layers}: a model needs at least one layer")
        values["num_hidden_layers"] = num_layers
    family = values.pop("model_type", "llama")
    config_cls, model_cls = (
        (Qwen3Config, Qwen3ForCausalLM) if family == "qwen3" else (LlamaConfig, LlamaForCausalLM)
    )
    cfg = config_cls(vocab_size=-(-vocab // 128) * 128, bos_token_id=None, **values)
    eot = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).token_to_id("<|endoftext|>")
    cfg.eos_token_id = cfg.pad_token_id = eot
    torch.manual_seed(seed)
    tiny = shape.endswith("tiny")
    dtype = torch.float32 if tiny else torch.bfloat16
    # Initialise on the GPU when there is one (an 8B shape takes seconds there, minutes on CPU).
    device = "cuda" if not tiny and torch.cuda.is_available() else "cpu"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_cls(cfg)
    finally:
        torch.set_default_dtype(previous)
    out_dir = Path(out)
    model.save_pretrained(out_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tok_dir / name).is_file():
            shutil.copy(tok_dir / name, out_dir / name)
    return out_dir


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog="python -m train.random_model", description=__doc__.split("\n")[0]
    )
    p.add_argument("--shape", choices=sorted(SHAPES), required=True)
    p.add_argument("--tokenizer", required=True, help="folder with tokenizer.json")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-position-embeddings",
        type=int,
        default=None,
        help="native context window in tokens (default: the shape's)",
    )
    p.add_argument(
        "--rope-theta", type=float, default=None, help="RoPE base (default: the shape's)"
    )
    p.add_argument(
        "--num-layers",
        type=int,
        default=None,
        help="decoder layers (default: the shape's); the shape's widths at a smaller depth, "
        "e.g. an 8B-wide model whose offloaded checkpoints fit a host that the full depth's do not",
    )
    a = p.parse_args(argv)
    if a.num_layers is not None and a.num_layers < 1:
        p.error(f"--num-layers {a.num_layers}: a model needs at least one layer")
    print(
        build(
            a.shape,
            a.tokenizer,
            a.out,
            a.seed,
            max_position_embeddings=a.max_position_embeddings,
            rope_theta=a.rope_theta,
            num_layers=a.num_layers,
        )
    )


if __name__ == "__main__":
    main()
