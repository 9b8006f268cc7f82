"""Training plans on CPU: RoPE maths, the memory model against GPU measurements, refusals."""

import json
import math

import pytest

from train.plan import (
    GIB,
    ModelShape,
    PlanError,
    check_gradient_checkpointing,
    estimate_peak_bytes,
    max_context,
    plan_offload,
    plan_rope,
    plan_steps,
)
from train.random_model import SHAPES

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def shape(name, **kw):
    return ModelShape.from_config_dict(
        dict(SHAPES[name], model_type="llama", vocab_size=128256, **kw)
    )


@pytest.mark.parametrize(
    ("name", "q", "r", "measured"),
    [
        ("llama-3.2-1b", False, 16, {32768: 7.1, 65536: 11.6, 131072: 20.8, 262144: 39.1}),
        ("llama-3.1-8b", True, 32, {32768: 11.9, 65536: 17.6, 131072: 29.1, 262144: 52.1}),
    ],
)
def test_memory_estimate_within_3_percent_of_bare_unsloth(name, q, r, measured):
    s = shape(name)
    for tokens, gib in measured.items():
        est = (
            estimate_peak_bytes(
                s, tokens, load_in_4bit=q, lora_r=r, modules=ALL, calibration="bare-unsloth"
            )
            / GIB
        )
        assert abs(est / gib - 1) < 0.03, (name, tokens, est, gib)


# Peaks (torch.cuda.max_memory_allocated, GiB) measured through train.launch, Unsloth 2026.10.9 +
# TRL 1.15, the Qwen3 vocabulary: (gpu, shape, 4-bit, LoRA r, tiled MLP, tokens, checkpoint
# layers kept on the GPU, GiB). H100: docs/benchmarks.md (sessions 2-4); H200:
# benchmarks/results/multi_gpu/unsloth1*.json and qlora1-8b-65536.json (bf16 LoRA r16, rows of
# 32K-token documents), benchmarks/results/one_gpu/*.json (--preset max-context, one document a
# row).
LAUNCHER_PEAKS = [
    ("H100", "llama-3.2-1b", False, 16, False, 32768, 0, 5.62),
    ("H100", "llama-3.2-1b", False, 16, False, 65536, 0, 8.69),
    ("H100", "llama-3.2-1b", False, 16, False, 131072, 0, 14.72),
    ("H100", "llama-3.2-1b", False, 16, False, 262144, 0, 27.06),
    ("H100", "llama-3.1-8b", True, 32, False, 65536, 0, 17.93),
    ("H100", "llama-3.1-8b", True, 32, False, 262144, 0, 52.47),
    ("H100", "llama-3.1-8b", True, 32, True, 262144, 0, 36.62),
    ("H100", "llama-3.1-8b", True, 32, True, 409600, 0, 52.52),
    ("H200", "llama-3.2-1b", False, 16, False, 65536, 0, 8.69),
    ("H200", "llama-3.2-1b", False, 16, False, 131072, 0, 13.86),
    ("H200", "llama-3.2-1b", False, 16, False, 262144, 0, 25.17),
    ("H200", "llama-3.2-1b", False, 16, True, 131072, 0, 10.12),
    ("H200", "llama-3.2-1b", False, 16, True, 262144, 0, 17.71),
    ("H200", "llama-3.1-8b", False, 16, False, 65536, 0, 26.27),
    ("H200", "llama-3.1-8b", False, 16, False, 131072, 0, 36.79),
    ("H200", "llama-3.1-8b", False, 16, True, 65536, 0, 23.29),
    ("H200", "llama-3.1-8b", False, 16, True, 131072, 0, 30.82),
    ("H200", "llama-3.1-8b", True, 32, False, 65536, 0, 18.33),
    ("H200", "llama-3.1-8b", True, 32, True, 131072, 24, 44.38),
    ("H200", "llama-3.1-8b", True, 32, True, 262144, 0, 36.69),
    ("H200", "llama-3.1-8b", True, 32, True, 524288, 5, 82.86),
    ("H200", "qwen3-8b", True, 32, True, 262144, 0, 39.22),
]


@pytest.mark.parametrize(
    ("gpu", "name", "q", "r", "tiled", "tokens", "kept", "gib"), LAUNCHER_PEAKS
)
def test_memory_estimate_errs_high_by_at_most_6_5_percent_on_every_launcher_peak(
    gpu, name, q, r, tiled, tokens, kept, gib
):
    """Never below a measured peak by more than 1% (a plan that says "fits" must fit), never
    above it by more than 6.5%; the 8B QLoRA runs on the H200 within 5%."""
    s = ModelShape.from_config_dict({"model_type": "llama", **SHAPES[name], "vocab_size": 151680})
    est = (
        estimate_peak_bytes(s, tokens, load_in_4bit=q, lora_r=r, modules=ALL, tiled_mlp=tiled)
        + kept * tokens * s.hidden_size * 2
    ) / GIB
    assert -0.01 <= est / gib - 1 <= 0.065, (gpu, name, tokens, est, gib)
    if gpu == "H200" and q:
        assert est / gib - 1 <= 0.05, (name, tokens, est, gib)


def test_qk_norm_models_keep_their_normalised_q_and_k():
    llama = ModelShape.from_config_dict({**SHAPES["llama-3.1-8b"], "vocab_size": 151680})
    qwen3 = ModelShape.from_config_dict({**SHAPES["qwen3-8b"], "vocab_size": 151680})
    assert qwen3.qk_norm and not llama.qk_norm
    assert ModelShape.from_config_dict(
        {**SHAPES["llama-3.1-8b"], "vocab_size": 151680, "use_qk_norm": True}
    ).qk_norm
    one = {"load_in_4bit": True, "lora_r": 32, "modules": ALL, "tiled_mlp": True}
    # the same widths, so the difference a token is the normalised q and k: (32 + 8) x 128 x 2
    extra = (estimate_peak_bytes(qwen3, 2, **one) - estimate_peak_bytes(qwen3, 1, **one)) - (
        estimate_peak_bytes(llama, 2, **one) - estimate_peak_bytes(llama, 1, **one)
    )
    assert abs(extra - 10240) <= 1


def test_the_tiled_mlp_is_not_modelled_by_the_bare_calibration():
    with pytest.raises(ValueError, match="tiled MLP"):
        estimate_peak_bytes(
            shape("llama-3.2-1b"), 65536, load_in_4bit=False, lora_r=16, modules=ALL,
            calibration="bare-unsloth", tiled_mlp=True,
        )  # fmt: skip


def test_max_context_is_monotone_and_fits():
    s = shape("llama-3.1-8b")
    ctx = max_context(s, 80, load_in_4bit=True, lora_r=32, modules=ALL, calibration="bare-unsloth")
    assert 300_000 < ctx < 500_000 and ctx % 1024 == 0
    assert (
        estimate_peak_bytes(
            s, ctx, load_in_4bit=True, lora_r=32, modules=ALL, calibration="bare-unsloth"
        )
        <= 0.95 * 80 * GIB
    )
    assert max_context(s, 40, load_in_4bit=True, lora_r=32, modules=ALL) < ctx + 1


def _qwen3(**kw):
    values = dict(
        SHAPES["tiny"],
        model_type="qwen3",
        vocab_size=151936,
        max_position_embeddings=40960,
        rope_theta=1_000_000.0,
    )
    return ModelShape.from_config_dict({**values, **kw})


def test_rope_auto_follows_the_model_family():
    """Past the native window: Llama 3 keeps llama3, Qwen2/Qwen3 take YaRN (Qwen's cards; Qwen3
    from the card's 32,768), any other model Unsloth's linear rule; each says where from."""
    l1 = shape("llama-3.2-1b")
    p = plan_rope(l1, 262144)
    assert p.native_context == 131072 and p.factor == 2.0 and p.unsloth_rope_scaling is None
    assert p.method == "llama3" and "llama3" in p.note and "config.json" in p.source
    assert p.config["rope_scaling"]["rope_type"] == "llama3"
    assert p.config["max_position_embeddings"] == 262144  # the window Unsloth widens to
    p = plan_rope(_qwen3(), 131072)
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert p.method == "yarn" and p.unsloth_rope_scaling == yarn and "Qwen" in p.source
    # transformers checks max_position_embeddings / original == factor; vLLM uses original x factor
    assert p.config == {
        "rope_scaling": yarn,
        "rope_theta": 1_000_000.0,
        "max_position_embeddings": 131072,
    }
    q25 = ModelShape.from_config_dict(
        dict(SHAPES["tiny"], model_type="qwen2", vocab_size=152064, max_position_embeddings=32768)
    )
    assert plan_rope(q25, 65536).unsloth_rope_scaling == dict(yarn, factor=2.0)
    assert plan_rope(_qwen3(), 40960).factor == 1.0  # within config.json's window: no scaling
    assert plan_rope(_qwen3(), 40960).config is None
    other = plan_rope(shape("tiny"), 8192)  # a llama without llama3 scaling
    assert other.method == "linear" and other.unsloth_rope_scaling is None  # Unsloth's own rule
    assert "Unsloth's default" in other.source
    # vLLM derives the window as max_position_embeddings x factor: the native one stays
    assert other.config["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    assert other.config["max_position_embeddings"] == 4096
    assert plan_rope(_qwen3(), 131072, "linear").source == "--rope-scaling linear"


def test_rope_explicit_modes_hand_computed():
    qwen = ModelShape.from_config_dict(
        dict(
            SHAPES["tiny"],
            model_type="qwen3",
            vocab_size=151936,
            max_position_embeddings=32768,
            rope_theta=1_000_000.0,
            head_dim=128,
        )
    )
    assert plan_rope(qwen, 131072, "linear").unsloth_rope_scaling == {
        "rope_type": "linear",
        "factor": 4.0,
    }
    y = plan_rope(qwen, 131072, "yarn").unsloth_rope_scaling
    assert y == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    ntk = plan_rope(qwen, 131072, "ntk").unsloth_rope_scaling
    assert ntk["rope_theta"] == pytest.approx(1_000_000.0 * 4.0 ** (128 / 126))  # 4,088,994
    assert math.isclose(ntk["rope_theta"], 4_088_994, rel_tol=1e-6)
    with pytest.raises(PlanError, match="ignores"):
        plan_rope(qwen, 131072, "dynamic")
    with pytest.raises(PlanError, match="not llama3"):
        plan_rope(qwen, 131072, "llama3")
    with pytest.raises(PlanError, match="never trained"):
        plan_rope(qwen, 131072, "none")
    gemma = ModelShape.from_config_dict(
        dict(SHAPES["tiny"], model_type="gemma2", vocab_size=256000)
    )
    with pytest.raises(PlanError, match="gemma2"):
        plan_rope(gemma, 131072, "linear")


def test_gradient_checkpointing_rules():
    check_gradient_checkpointing("unsloth", 262144)
    check_gradient_checkpointing(True, 32768)
    with pytest.raises(PlanError, match="unsloth"):
        check_gradient_checkpointing(True, 65536)
    with pytest.raises(PlanError, match="unsloth"):
        check_gradient_checkpointing(False, 40000)


def test_steps_from_tokens_per_step():
    s = plan_steps(
        samples=100,
        seq_len=65536,
        batch=1,
        tokens_per_step=1 << 20,
        accum=0,
        epochs=2,
        max_steps=-1,
    )
    # the Trainer's rule: ceil(100 / 16) = 7 steps an epoch (the last one takes 4 rows), 14 in 2
    assert (s.gradient_accumulation_steps, s.tokens_per_step, s.steps) == (16, 1 << 20, 14)
    assert s.epochs == 2.0 and s.samples_seen == 200 and not s.warnings
    assert (
        plan_steps(
            samples=100, seq_len=8, batch=2, tokens_per_step=0, accum=3, epochs=1, max_steps=7
        ).steps
        == 7
    )


def test_real_epoch_fraction_and_clamps():
    """A 2-step run of 32 rows a step over 178 samples goes through 64 of them: 0.36 epochs,
    not 1.0; warmup as long as the run and accumulation beyond the data are clamped, saying so."""
    kw = dict(seq_len=2048, batch=1, tokens_per_step=65536, accum=0, epochs=1.0)
    s = plan_steps(samples=178, max_steps=2, warmup_steps=5, **kw)
    assert (s.gradient_accumulation_steps, s.steps, s.samples_seen) == (32, 2, 64)
    assert s.epochs == pytest.approx(64 / 178, abs=1e-4) and round(s.epochs, 2) == 0.36
    assert s.warmup_steps == 0 and "--warmup-steps 5" in s.warnings[0]
    assert "never reach its peak" in s.warnings[0]
    s = plan_steps(samples=178, max_steps=40, warmup_steps=40, **kw)
    assert s.warmup_steps == 4 and s.epochs == pytest.approx(6 + 4 * 32 / 178, abs=1e-4)
    assert plan_steps(samples=178, max_steps=40, warmup_steps=39, **kw).warnings == []
    # two processes: each reads 89 rows an epoch, a step is 2 x 16 rows
    s = plan_steps(samples=178, max_steps=2, world_size=2, **kw)
    assert (s.gradient_accumulation_steps, s.micro_batches_per_epoch) == (16, 89)
    assert s.samples_seen == 64
    # 14 samples at 2048 tokens cannot fill a 524,288-token step: accumulation 256 -> 14
    s = plan_steps(samples=14, max_steps=-1, **dict(kw, tokens_per_step=524288))
    assert (s.gradient_accumulation_steps, s.tokens_per_step, s.steps) == (14, 14 * 2048, 1)
    assert s.epochs == 1.0 and "gradient accumulation 256" in s.warnings[0]
    assert "clamped to 14" in s.warnings[0]
    s = plan_steps(samples=14, max_steps=3, **dict(kw, accum=20))  # an explicit one too
    assert s.gradient_accumulation_steps == 14 and s.epochs == 3.0


def test_a_plan_of_zero_steps_is_refused():
    for samples, epochs in ((0, 1), (10, 0)):
        with pytest.raises(PlanError, match="0 training steps"):
            plan_steps(
                samples=samples,
                seq_len=8,
                batch=1,
                tokens_per_step=8,
                accum=1,
                epochs=epochs,
                max_steps=-1,
            )


def _8b_qwen_vocab():
    return ModelShape.from_config_dict(
        dict(SHAPES["llama-3.1-8b"], model_type="llama", vocab_size=151680)
    )


def test_max_context_preset_reaches_the_h100_run_only_with_the_tiled_mlp():
    """--preset max-context (4-bit QLoRA r32, tiled MLP, offloaded checkpoints) on the 8B shape
    trained 409,600 tokens on an H100 80GB (its peaks are in LAUNCHER_PEAKS); without the tiled
    MLP the planner stops short of 400K on 80 GB."""
    s8 = _8b_qwen_vocab()
    plain = max_context(s8, 80, load_in_4bit=True, lora_r=32, modules=ALL)
    tiled = max_context(s8, 80, load_in_4bit=True, lora_r=32, modules=ALL, tiled_mlp=True)
    assert plain < 400_000 <= 409_600 < tiled


def test_offload_plan_host_ram_and_pinned_buffers():
    s8 = _8b_qwen_vocab()
    # 409,600 tokens: 32 layers x 3.125 GiB = 100 GiB; pinned buffers would round to 4 GiB each
    big = plan_offload(s8, 409600, "unsloth", 128 * GIB)
    assert big.host_bytes == 100 * GIB and big.pinned_bytes == 128 * GIB and not big.pinned
    assert 409600 <= big.max_context_host < 500_000
    # 262,144 tokens: 2 GiB a layer is already a power of two, 64 GiB pinned (as measured: pinned)
    mid = plan_offload(s8, 262144, "unsloth", 128 * GIB)
    assert mid.pinned and mid.pinned_bytes == 64 * GIB
    assert plan_offload(s8, 409600, "unsloth", 256 * GIB, "true").pinned
    # pinned forced on: each buffer counts rounded up (4 GiB), 128 GiB > 128 - 16 GiB of room
    with pytest.raises(PlanError, match=r"need 128.0 GiB \(32 layers x 4.00 GiB\)") as refused:
        plan_offload(s8, 409600, "unsloth", 128 * GIB, "true")
    # the largest context it names is one whose rounded buffers fit (2 GiB a layer), not the
    # pageable figure (458,752 tokens would round to 4 GiB a layer as well)
    assert "the largest context it holds is about 262144)" in str(refused.value)
    assert plan_offload(s8, 262144, "unsloth", 128 * GIB, "true").max_context_host == 262144
    assert not plan_offload(s8, 65536, "unsloth", 128 * GIB, "false").pinned
    with pytest.raises(PlanError, match="--host-memory-gib"):
        plan_offload(s8, 409600, "unsloth", 64 * GIB)
    assert plan_offload(s8, 409600, True, 64 * GIB) is None  # checkpoints stay on the GPU


def test_checkpoints_the_host_cannot_hold_stay_on_the_gpu():
    """524,288 tokens of the 8B shape: 32 layers x 4 GiB of checkpoints. A 128 GiB host holds
    (128 - 16) / 4 = 28 of them; the first 4 stay on the GPU if its room holds 16 GiB, and the
    plan refuses (naming both memories) when it does not. Over 2 ranks each keeps half a layer."""
    s8 = _8b_qwen_vocab()
    o = plan_offload(s8, 524288, "unsloth", 128 * GIB, "auto", gpu_room_bytes=60 * GIB)
    assert (o.gpu_layers, o.gpu_bytes, o.host_bytes) == (4, 16 * GIB, 112 * GIB)
    assert "first 4 of 32 layers keep theirs on the GPU (16.0 GiB)" in o.note
    assert plan_offload(s8, 524288, "unsloth", 200 * GIB, "auto", 60 * GIB).gpu_layers == 0
    with pytest.raises(
        PlanError, match=r"the 4 layers it cannot hold \(16.0 GiB per GPU\) do not fit the 15.0 GiB"
    ):
        plan_offload(s8, 524288, "unsloth", 128 * GIB, "auto", gpu_room_bytes=15 * GIB)
    with pytest.raises(PlanError, match="--host-memory-gib"):  # no GPU room given: as before
        plan_offload(s8, 524288, "unsloth", 128 * GIB)
    two = plan_offload(s8, 524288, "unsloth", 128 * GIB, "false", 8 * GIB, ranks=2)
    assert (two.gpu_layers, two.gpu_bytes) == (4, 8 * GIB)
    # a host with no room for even one layer beside its 16 GiB: all on the GPU, if it has room
    assert plan_offload(s8, 524288, "unsloth", 16 * GIB, "auto", 200 * GIB).gpu_layers == 32
    with pytest.raises(PlanError, match="the 32 layers it cannot hold"):
        plan_offload(s8, 524288, "unsloth", 16 * GIB, "auto", 100 * GIB)
    # two data-parallel processes on one host offload a row each: twice the host RAM
    two_dp = plan_offload(s8, 262144, "unsloth", 128 * GIB, "false", 60 * GIB, processes=2)
    assert (two_dp.gpu_layers, two_dp.gpu_bytes, two_dp.host_bytes) == (4, 8 * GIB, 112 * GIB)


def test_plan_puts_the_kept_layers_in_the_gpu_peak():
    """Through train.preflight: the 8B shape at 524,288 tokens on a 140 GiB GPU and a 128 GiB
    host keeps 4 layers on the GPU, and the printed peak is the layer estimate plus 16 GiB."""
    from train.config import TrainConfig
    from train.preflight import plan_memory

    shape = _8b_qwen_vocab()
    cfg = TrainConfig(
        data="x", model="m", load_in_4bit=True, lora_r=32, lora_alpha=32, tiled_mlp=True,
        gpu_memory_gib=140, host_memory_gib=128,
    )  # fmt: skip
    warnings: list[str] = []
    mem = plan_memory(cfg, shape, 524288, "unsloth", dry_run=False, warnings=warnings)
    base = estimate_peak_bytes(
        shape, 524288, load_in_4bit=True, lora_r=32, modules=list(cfg.target_modules),
        gc="unsloth", tiled_mlp=True,
    )  # fmt: skip
    assert mem["offload"]["gpu_layers"] == 4
    assert mem["estimated_peak_gib"] == round((base + 16 * GIB) / GIB, 2)
    cfg.gpu_memory_gib = 80  # no room left beside the layers' own peak: refused, not guessed
    with pytest.raises(PlanError, match="do not fit the"):
        plan_memory(cfg, shape, 524288, "unsloth", dry_run=False, warnings=warnings)


def test_preset_sits_below_yaml_and_flags(tmp_path):
    from train.config import ConfigError, load_config

    base = {"data": "d", "model": "m"}
    cfg = load_config(None, {**base, "preset": "max-context"})
    assert cfg.load_in_4bit and cfg.tiled_mlp and cfg.lora_r == 32
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("preset: max-context\nlora_r: 8\n")
    cfg = load_config(str(yaml_file), {**base, "lora_alpha": 4})
    assert cfg.tiled_mlp and cfg.lora_r == 8 and cfg.lora_alpha == 4
    with pytest.raises(ConfigError, match="--preset"):
        load_config(None, {**base, "preset": "fastest"})


def test_every_training_config_parses_and_starts_with_its_command():
    from pathlib import Path

    from train.config import load_config

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 5
    for path in configs:
        assert path.read_text().startswith(f"# python -m train.launch --config configs/{path.name}")
        cfg = load_config(str(path), {})
        assert cfg.max_seq_length > 0 and cfg.data and cfg.model, path


def test_qwen3_shapes_build_qwen3_models(tmp_path, qwen3_dir):
    """train.random_model's qwen3 shapes are Qwen3 models (QK-norm attention), not Llama ones
    with Qwen3's sizes: the planner reads them as qwen3, and the 8B shape has Qwen3-8B's 8.19B
    parameters (Qwen3's vocabulary)."""
    from transformers import AutoModelForCausalLM

    from train.random_model import build

    out = build("qwen3-tiny", qwen3_dir, str(tmp_path / "q3"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "qwen3" and cfg["num_hidden_layers"] == 2
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert hasattr(model.model.layers[0].self_attn, "q_norm")
    big = ModelShape.from_config_dict(dict(SHAPES["qwen3-8b"], vocab_size=151680))
    assert big.model_type == "qwen3" and big.num_hidden_layers == 36
    assert abs(big.n_params / 1e9 - 8.19) < 0.01


def test_num_layers_builds_a_shallower_model_of_the_same_widths(tmp_path, qwen3_dir):
    """--num-layers changes the depth only (benchmarks/one_gpu.sh's 8B-wide proxy at 524,288
    tokens); 0 layers is refused up front, naming the flag."""
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    cli = [sys.executable, "-m", "train.random_model", "--shape", "qwen3-tiny"]
    cli += ["--tokenizer", qwen3_dir]
    done = subprocess.run([*cli, "--out", tmp_path / "m", "--num-layers", "1"], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 1
    assert {k: cfg[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads")} == {
        k: SHAPES["qwen3-tiny"][k]
        for k in ("hidden_size", "intermediate_size", "num_attention_heads")
    }
    assert len(AutoModelForCausalLM.from_pretrained(tmp_path / "m").model.layers) == 1
    bad = subprocess.run([*cli, "--out", tmp_path / "z", "--num-layers", "0"], capture_output=True)
    assert bad.returncode == 2 and b"--num-layers 0" in bad.stderr
    assert not (tmp_path / "z").exists()


def test_a_dry_run_does_not_keep_layers_for_this_machines_ram(monkeypatch):
    """The plan may be made on another machine than the one that trains: without
    --host-memory-gib a dry run plans every layer offloaded and warns about this machine's RAM
    (here 24 GiB, too little for 262,144 tokens of the 8B shape), instead of quietly adding
    GPU layers to the peak."""
    from train import preflight
    from train.config import TrainConfig

    monkeypatch.setattr(preflight, "host_memory_bytes", lambda: 24 * GIB)
    cfg = TrainConfig(
        data="x", model="m", load_in_4bit=True, lora_r=32, lora_alpha=32, tiled_mlp=True,
        gpu_memory_gib=140,
    )  # fmt: skip
    warnings: list[str] = []
    mem = preflight.plan_memory(
        cfg, _8b_qwen_vocab(), 262144, "unsloth", dry_run=True, warnings=warnings
    )
    assert mem["offload"]["gpu_layers"] == 0 and mem["offload"]["host_bytes"] == 64 * GIB
    assert any("host RAM 24 GiB would keep the first" in w for w in warnings), warnings
    cfg.host_memory_gib = 24  # said for the training machine: planned, not warned
    warnings.clear()
    mem = preflight.plan_memory(
        cfg, _8b_qwen_vocab(), 262144, "unsloth", dry_run=True, warnings=warnings
    )
    assert mem["offload"]["gpu_layers"] == 28 and not warnings


def test_host_ram_counts_the_processes_of_this_node_only(monkeypatch):
    """Under a two-node torchrun (WORLD_SIZE 4, LOCAL_WORLD_SIZE 2) each host holds the
    checkpoints of its own two processes: 2 x 64 GiB at 262,144 tokens of the 8B shape, which
    a 256 GiB host holds; counting all four processes would keep layers on the GPU."""
    from train.config import TrainConfig
    from train.preflight import plan_memory

    cfg = TrainConfig(
        data="x", model="m", load_in_4bit=True, lora_r=32, lora_alpha=32, tiled_mlp=True,
        gpu_memory_gib=140, host_memory_gib=256, offload_pinned="false",
    )  # fmt: skip
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    mem = plan_memory(cfg, _8b_qwen_vocab(), 262144, "unsloth", dry_run=False, warnings=[])
    assert mem["offload"]["gpu_layers"] == 0 and mem["offload"]["host_bytes"] == 128 * GIB
    monkeypatch.delenv("LOCAL_WORLD_SIZE")  # a launcher that sets WORLD_SIZE only: all of them
    mem = plan_memory(cfg, _8b_qwen_vocab(), 262144, "unsloth", dry_run=False, warnings=[])
    assert mem["offload"]["gpu_layers"] > 0


def test_a_missing_local_model_folder_is_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    """A new user's --model models/qtiny (a folder that does not exist, under a models/ that
    does) waited ~23 s of Hub retries before "cannot fetch config.json from the Hub": it is a
    local path, refused at once. A real owner/name id that is not cached, offline, fails fast
    and says why."""
    from train.plan import read_model_shape
    from transforms.hub import looks_like_hub_id

    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not looks_like_hub_id("models/qtiny") and looks_like_hub_id("Qwen/Qwen3-8B")
    assert not looks_like_hub_id("./x") and not looks_like_hub_id("a/b/c")
    for spec in ("models/qtiny", "a/b/c"):
        with pytest.raises(PlanError, match="no such folder here, and not a Hub id"):
            read_model_shape(spec)
    # the cache-and-reachability check answers, not the Hub client after its retries
    with pytest.raises(PlanError, match="as a Hub id not in the Hugging Face cache and HF_HUB"):
        read_model_shape("no-such-owner-xyz/no-such-model")


def test_a_cached_hub_id_beside_a_local_folder_of_its_owner_stays_a_hub_id(tmp_path, monkeypatch):
    """Review: with a folder Qwen/ in the working directory, Qwen/Qwen3-8B was refused as a
    mistyped path although the Hub cache held it; a cached id is a Hub id."""
    from huggingface_hub import constants

    from train.plan import read_model_shape
    from train.random_model import SHAPES

    cache = tmp_path / "hub"
    snap = cache / "models--Qwen--Qwen3-8B" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps({**SHAPES["qwen3-8b"], "vocab_size": 151936}))
    (cache / "models--Qwen--Qwen3-8B" / "refs").mkdir()
    (cache / "models--Qwen--Qwen3-8B" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "Qwen").mkdir()
    monkeypatch.chdir(tmp_path)
    assert read_model_shape("Qwen/Qwen3-8B").num_hidden_layers == 36
    with pytest.raises(PlanError, match="not a Hub id"):  # not cached: the local reading
        read_model_shape("Qwen/Qwen3-4B")
