"""Plain-Python planning of a long-context run: model shape, RoPE scaling, memory, steps.

No GPU, no torch, no unsloth: this is what ``--dry-run`` prints.

**RoPE** (``auto`` mirrors Unsloth 2026.10): past the model's native window, a model with
``llama3`` scaling keeps it and only widens the window; any other model gets linear scaling
with factor target/native. Explicit ``linear``, ``yarn`` and ``llama3`` are passed to Unsloth;
``dynamic`` (and any scaling on Gemma) Unsloth ignores with a warning, so we refuse it; ``ntk``
keeps plain RoPE with a new base by the NTK-aware rule theta' = theta * s^(d/(d-2)).

**Memory** (peak GPU bytes, batch 1, ``use_gradient_checkpointing="unsloth"``)::

    fixed     = base weights (bf16: 2 B/param; 4-bit: 0.53 B/linear param + bf16 embeddings)
              + LoRA parameters x 10 B (fp32 weight + grad, 8-bit Adam) + 0.1 GiB
    per token = c_vocab x vocab + c_hidden x hidden   bytes   (c_hidden 18.74; launcher 4-bit 31.16)

Two calibrations of Unsloth 2026.10.9 on an H100. ``bare-unsloth`` (c_vocab 0.8687) is fitted to
GPU-NOTES.md's bare forward+backward with full logits: Llama-3.2-1B bf16 LoRA r16
(7.1/11.6/20.8/39.1 GiB at 32K/64K/128K/256K) and Llama-3.1-8B QLoRA r32 (11.9/17.6/29.1/52.1
GiB), within 3% of all eight points. ``launcher`` (c_vocab 0.4023, the default) is what
``train.launch`` peaks at, measured here through TRL's SFTTrainer, whose fused LM head never
materialises the logits: 1B shape with the Qwen3 vocabulary, 5.62/8.69/14.72 GiB
(max_memory_allocated) at 32K/64K/128K and 27.06 GiB at 256K, estimate within 1%; with 4-bit
QLoRA r32 on the 8B shape it peaked at 17.93 / 52.47 GiB at 64K / 256K, more per token than the
bf16 hidden term predicts (the bitsandbytes path keeps more per layer), hence c_hidden 31.16 for
4-bit in the launcher calibration: within 1.3% of both (docs/benchmarks.md; +1.26% at 64K). With the tiled
MLP (``--preset max-context``) 4-bit c_hidden is 14.64, fitted to the 8B shape's 36.62 / 52.52 GiB
at 262,144 / 409,600 tokens (within 1.3%: -1.21% / +0.52%). HF gradient checkpointing keeps every layer's
input on the GPU (+2 x layers x hidden bytes per token); no checkpointing is not modelled.

**Host memory** for offloaded checkpoints: layers x tokens x hidden x 2 bytes, plus 16 GiB for
everything else (the 8B run at 409,600 tokens: 100 GiB of checkpoints, 103.6 GiB peak RSS).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

GIB = 2**30
LORA_BYTES_PER_PARAM = 10
OVERHEAD_BYTES = int(0.1 * GIB)
# bytes per token = vocab_coef x vocab + hidden_coef x hidden (see the module docstring)
# (c_vocab, c_hidden for bf16 LoRA, c_hidden for 4-bit QLoRA)
CALIBRATIONS = {
    # train.launch (TRL SFTTrainer's fused LM head never materialises the logits), measured here
    "launcher": (0.4023, 18.74, 31.16),
    # bare Unsloth forward+backward with full logits (GPU-NOTES.md)
    "bare-unsloth": (0.8687, 18.74, 18.74),
}
# With Unsloth's tiled MLP the MLP's intermediate activations (about 3 x intermediate x 2 bytes a
# token) no longer scale with the context: c_hidden for 4-bit QLoRA through the launcher becomes
# TILED_HIDDEN_4BIT (measured on the 8B shape, docs/benchmarks.md); bf16 LoRA is scaled by the
# same ratio (not measured).
TILED_HIDDEN_4BIT = 14.64
# Offloaded checkpoints keep each decoder layer's input (bf16) in host RAM; pinned buffers are
# rounded up to a power of two by torch's caching host allocator. Pinned stays on while the
# rounded buffers take at most PINNED_SHARE of host RAM; offloading needs HOST_HEADROOM_BYTES of
# host RAM beside the buffers (Python, the CUDA context, the loaded model).
PINNED_SHARE = 0.5
HOST_HEADROOM_BYTES = 16 * GIB
GC_UNSLOTH_REQUIRED_ABOVE = 32768


class PlanError(ValueError):
    """A plan that cannot work; the message says what to change."""


@dataclass
class ModelShape:
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rope_theta: float
    rope_scaling: dict | None
    tie_word_embeddings: bool

    @classmethod
    def from_config_dict(cls, cfg: dict) -> ModelShape:
        cfg = dict(
            cfg.get("text_config", {}) or {}, **{k: v for k, v in cfg.items() if k != "text_config"}
        )
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or None
        theta = cfg.get("rope_theta") or (rope or {}).get("rope_theta") or 10000.0
        if rope and (rope.get("rope_type") or rope.get("type")) in (None, "default"):
            rope = None
        return cls(
            model_type=str(cfg.get("model_type", "unknown")),
            hidden_size=hidden,
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            intermediate_size=int(cfg["intermediate_size"]),
            vocab_size=int(cfg["vocab_size"]),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            rope_theta=float(theta),
            rope_scaling=dict(rope) if rope else None,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )

    @property
    def linear_params_per_layer(self) -> int:
        h, q, kv = (
            self.hidden_size,
            self.num_attention_heads * self.head_dim,
            self.num_key_value_heads * self.head_dim,
        )
        return h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def n_params(self) -> int:
        return (
            self.num_hidden_layers * (self.linear_params_per_layer + 2 * self.hidden_size)
            + self.embedding_params
        )

    def lora_params(self, r: int, modules: list[str]) -> int:
        h, q, kv, i = (
            self.hidden_size,
            self.num_attention_heads * self.head_dim,
            self.num_key_value_heads * self.head_dim,
            self.intermediate_size,
        )
        dims = {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }
        return self.num_hidden_layers * sum(r * sum(dims[m]) for m in modules if m in dims)


def read_model_shape(model: str, trust_remote_code: bool = False) -> ModelShape:
    """The model's config.json, from a local folder or the Hub (huggingface_hub, if installed)."""
    path = Path(model).expanduser()
    cfg_path = path / "config.json" if path.is_dir() else None
    if cfg_path is None or not cfg_path.is_file():
        if path.exists() or model.startswith((".", "/", "~")):
            raise PlanError(f"--model {model}: no config.json there")
        try:
            from huggingface_hub import hf_hub_download

            cfg_path = Path(hf_hub_download(model, "config.json"))
        except Exception as err:
            raise PlanError(
                f"--model {model}: cannot fetch config.json from the Hub ({err})"
            ) from err
    return ModelShape.from_config_dict(json.loads(cfg_path.read_text()))


@dataclass
class RopePlan:
    mode: str
    native_context: int
    target_context: int
    factor: float
    unsloth_rope_scaling: dict | None  # what to pass to FastLanguageModel.from_pretrained
    note: str


def plan_rope(shape: ModelShape, target: int, mode: str = "auto") -> RopePlan:
    native = shape.max_position_embeddings
    existing = (shape.rope_scaling or {}).get("rope_type") or (shape.rope_scaling or {}).get("type")
    factor = max(1.0, target / native)
    mode = mode.lower()
    if shape.model_type in ("gemma", "gemma2") and mode not in ("auto", "none"):
        raise PlanError(
            f"--rope-scaling {mode}: Unsloth ignores RoPE scaling on {shape.model_type}; use auto or none"
        )
    if mode == "none":
        if target > native:
            raise PlanError(
                f"--rope-scaling none with --max-seq-length {target} > the model's native "
                f"{native}: positions past {native} were never trained; use auto, linear or yarn"
            )
        return RopePlan(mode, native, target, 1.0, None, "within the native window: no scaling")
    if mode == "auto":
        if target <= native:
            return RopePlan(mode, native, target, 1.0, None, "within the native window: no scaling")
        if existing == "llama3":
            return RopePlan(
                mode,
                native,
                target,
                factor,
                None,
                f"keeps the model's llama3 scaling; Unsloth widens the window to {target}",
            )
        return RopePlan(
            mode,
            native,
            target,
            factor,
            None,
            f"Unsloth applies linear scaling, factor {factor:.3g} = {target}/{native}",
        )
    if mode == "dynamic":
        raise PlanError(
            "--rope-scaling dynamic: Unsloth ignores it (logs a warning and trains unscaled); "
            "use linear, yarn, llama3 or ntk"
        )
    if mode == "linear":
        return RopePlan(
            mode,
            native,
            target,
            factor,
            {"rope_type": "linear", "factor": factor},
            f"linear, factor {factor:.3g}",
        )
    if mode == "yarn":
        return RopePlan(
            mode,
            native,
            target,
            factor,
            {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": native},
            f"YaRN, factor {factor:.3g} over {native}",
        )
    if mode == "llama3":
        if existing != "llama3":
            raise PlanError(
                f"--rope-scaling llama3: the model has {existing or 'no'} scaling, not llama3"
            )
        return RopePlan(mode, native, target, factor, None, "keeps the model's llama3 scaling")
    if mode == "ntk":
        d = shape.head_dim
        theta = shape.rope_theta * factor ** (d / (d - 2))
        return RopePlan(
            mode,
            native,
            target,
            factor,
            {"rope_type": "linear", "factor": 1.0, "rope_theta": theta},
            f"NTK-aware base: rope_theta {shape.rope_theta:g} -> {theta:.6g} (s={factor:.3g}, d={d})",
        )
    raise PlanError(
        f"--rope-scaling {mode}: expected auto, none, linear, yarn, dynamic, llama3 or ntk"
    )


def weight_bytes(shape: ModelShape, load_in_4bit: bool) -> int:
    linear = shape.num_hidden_layers * shape.linear_params_per_layer
    other = shape.n_params - linear
    return int(linear * 0.53 + other * 2) if load_in_4bit else 2 * shape.n_params


def fixed_bytes(shape: ModelShape, *, load_in_4bit: bool, lora_r: int, modules: list[str]) -> int:
    return (
        weight_bytes(shape, load_in_4bit)
        + LORA_BYTES_PER_PARAM * shape.lora_params(lora_r, modules)
        + OVERHEAD_BYTES
    )


def per_token_bytes(
    shape: ModelShape,
    gc: str | bool = "unsloth",
    calibration: str = "launcher",
    load_in_4bit: bool = False,
    tiled_mlp: bool = False,
) -> float:
    vocab_coef, hidden_bf16, hidden_4bit = CALIBRATIONS[calibration]
    hidden_coef = hidden_4bit if load_in_4bit else hidden_bf16
    if tiled_mlp:
        hidden_coef *= TILED_HIDDEN_4BIT / CALIBRATIONS["launcher"][2]
    b = vocab_coef * shape.vocab_size + hidden_coef * shape.hidden_size
    if gc is True:
        b += 2 * shape.num_hidden_layers * shape.hidden_size
    return b


def estimate_peak_bytes(
    shape: ModelShape,
    tokens: int,
    *,
    load_in_4bit: bool,
    lora_r: int,
    modules: list[str],
    gc: str | bool = "unsloth",
    calibration: str = "launcher",
    tiled_mlp: bool = False,
) -> int:
    return int(
        fixed_bytes(shape, load_in_4bit=load_in_4bit, lora_r=lora_r, modules=modules)
        + tokens * per_token_bytes(shape, gc, calibration, load_in_4bit, tiled_mlp)
    )


def max_context(
    shape: ModelShape,
    gpu_gib: float,
    *,
    load_in_4bit: bool,
    lora_r: int,
    modules: list[str],
    gc: str | bool = "unsloth",
    headroom: float = 0.95,
    calibration: str = "launcher",
    tiled_mlp: bool = False,
) -> int:
    """Largest context (multiple of 1024) whose estimate fits in ``headroom`` of the GPU."""
    room = gpu_gib * GIB * headroom - fixed_bytes(
        shape, load_in_4bit=load_in_4bit, lora_r=lora_r, modules=modules
    )
    per_token = per_token_bytes(shape, gc, calibration, load_in_4bit, tiled_mlp)
    return max(0, int(room / per_token) // 1024 * 1024)


def host_memory_bytes() -> int:
    """This machine's physical memory (0 if the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


@dataclass
class OffloadPlan:
    host_bytes: int  # offloaded checkpoints, unrounded (pageable)
    pinned_bytes: int  # the same, each buffer rounded up to a power of two (pinned)
    host_memory_bytes: int
    pinned: bool
    max_context_host: int  # largest context whose pageable checkpoints fit host RAM
    note: str


def plan_offload(
    shape: ModelShape, tokens: int, gc: str | bool, host_bytes: int, pinned: str = "auto"
) -> OffloadPlan | None:
    """Host RAM for ``use_gradient_checkpointing="unsloth"``: every decoder layer's input is
    copied to host memory in the forward pass and read back in the backward pass."""
    if gc != "unsloth":
        return None
    per_layer = tokens * shape.hidden_size * 2
    need = shape.num_hidden_layers * per_layer
    rounded = shape.num_hidden_layers * (1 << max(0, per_layer - 1).bit_length())
    room = host_bytes - HOST_HEADROOM_BYTES
    max_host = max(0, room // (shape.num_hidden_layers * shape.hidden_size * 2) // 1024 * 1024)
    if host_bytes and need > room:
        raise PlanError(
            f"offloaded checkpoints at {tokens} tokens need {need / GIB:.1f} GiB of host RAM "
            f"({shape.num_hidden_layers} layers x {per_layer / GIB:.2f} GiB) plus "
            f"{HOST_HEADROOM_BYTES // GIB} GiB beside them, more than the "
            f"{host_bytes / GIB:.0f} GiB here: the largest context this host holds is about "
            f"{max_host}; lower --max-seq-length, or set --host-memory-gib if this machine "
            "has more memory than it reports"
        )
    mode = str(pinned).lower()
    if mode == "auto":
        use_pinned = not host_bytes or rounded <= PINNED_SHARE * host_bytes
    else:
        use_pinned = mode == "true"
    if use_pinned:
        note = f"{need / GIB:.1f} GiB of host RAM ({rounded / GIB:.0f} GiB pinned, power-of-two buffers)"
    else:
        note = (
            f"{need / GIB:.1f} GiB of pageable host RAM (pinned buffers would round up to "
            f"{rounded / GIB:.0f} GiB): copies no longer overlap compute"
        )
    return OffloadPlan(need, rounded, host_bytes, use_pinned, int(max_host), note)


@dataclass
class StepPlan:
    per_device_batch_size: int
    gradient_accumulation_steps: int
    tokens_per_step: int
    samples: int
    epochs: float
    steps: int


def plan_steps(
    *,
    samples: int,
    seq_len: int,
    batch: int,
    tokens_per_step: int,
    accum: int,
    epochs: float,
    max_steps: int,
    world_size: int = 1,
) -> StepPlan:
    """Batch, accumulation and steps; with ``world_size`` processes (one per GPU) a step sees
    ``batch x accum x world_size`` rows, each process a disjoint share of the samples."""
    if batch <= 0:
        raise PlanError(f"--per-device-batch-size must be >= 1, got {batch}")
    if world_size <= 0:
        raise PlanError(f"--nproc-per-node must be >= 1, got {world_size}")
    rows = batch * world_size
    if accum <= 0:
        accum = max(1, round(tokens_per_step / (rows * seq_len)))
    steps = max_steps if max_steps > 0 else math.ceil(samples * epochs / (rows * accum))
    if samples <= 0 or steps <= 0:
        raise PlanError(
            f"the plan has 0 training steps ({samples} samples, --num-train-epochs {epochs}): "
            "nothing to train on; check the pipeline output (python -m pipeline.validate)"
        )
    return StepPlan(batch, accum, rows * accum * seq_len, samples, epochs, steps)


def check_gradient_checkpointing(gc: str | bool, max_seq_length: int) -> None:
    if max_seq_length > GC_UNSLOTH_REQUIRED_ABOVE and gc != "unsloth":
        raise PlanError(
            f"--gradient-checkpointing {gc} at --max-seq-length {max_seq_length}: above "
            f"{GC_UNSLOTH_REQUIRED_ABOVE} tokens only 'unsloth' (offloaded) checkpointing fits; "
            "set --gradient-checkpointing unsloth"
        )
    if gc not in ("unsloth", True, False):
        raise PlanError(f"--gradient-checkpointing {gc}: expected unsloth, true or false")


def as_dict(obj) -> dict:
    return asdict(obj)
