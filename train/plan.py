"""Plain-Python planning of a long-context run: model shape, RoPE scaling, memory, steps.

No GPU, no torch, no unsloth: this is what ``--dry-run`` prints.

**RoPE** (``auto``): within the model's native window, no scaling; past it, the scaling the
model's family recommends (:func:`family_rope`, printed with its source by ``--dry-run``): a
model with ``llama3`` scaling (Llama 3.1+) keeps it and Unsloth only widens the window; Qwen2 and
Qwen3 get YaRN with factor target/original (Qwen's model cards; Qwen3's original window is the
card's 32,768, not config.json's 40,960); any other model Unsloth's own rule, linear scaling with
factor target/native. Explicit ``linear``, ``yarn`` and ``llama3`` are passed to Unsloth;
``dynamic`` (and any scaling on Gemma) Unsloth ignores with a warning, so we refuse it; ``ntk``
keeps plain RoPE with a new base by the NTK-aware rule theta' = theta * s^(d/(d-2)). The plan
also says what the trained model's ``config.json`` holds (``RopePlan.config``: written by
``train.export``, applied by the CPU path).

**Memory** (peak GPU bytes, batch 1, ``use_gradient_checkpointing="unsloth"``)::

    fixed     = base weights (bf16: 2 B/param; 4-bit: 0.53 B/linear param + bf16 embeddings)
              + LoRA parameters x 10 B (fp32 weight + grad, 8-bit Adam) + 0.1 GiB
    per token = c_vocab x vocab + c_hidden x hidden + c_mlp x intermediate   bytes

``launcher`` (the default) is what ``train.launch`` peaks at through TRL's SFTTrainer, whose
fused LM head never materialises the logits: c_vocab 0, c_hidden 29.91, c_mlp 4.62 (bf16 LoRA
and 4-bit QLoRA alike), and c_mlp 0 with Unsloth's tiled MLP (``--preset max-context``), which no
longer keeps the MLP's intermediate activations. A model with QK-norm (Qwen3, Gemma 3, OLMo 2:
:data:`QK_NORM_TYPES`, or ``use_qk_norm`` in its config) also keeps its normalised q and k, 2 x
(heads + kv_heads) x head_dim bytes a token (Qwen3-8B's shape: +10.3 KB a token over
Llama-3.1-8B's, against 10.2 predicted). With offloaded checkpoints only one decoder layer's
activations are on the GPU at a time, so the per-token cost follows the layer's widths, not the
layer count. Fitted to the 22 peaks measured through the launcher (Unsloth 2026.10.9, H100 and
H200, the Qwen3 vocabulary; listed in ``tests/test_train_plan.py``): the Llama-3.2-1B shape,
bf16 LoRA r16, untiled 32K-256K and tiled 128K/256K; the Llama-3.1-8B shape, bf16 LoRA r16
untiled and tiled at 64K/128K, 4-bit QLoRA r32 untiled at 64K/256K and tiled at
128K-512K (two of them with checkpoint layers kept on the GPU, added at tokens x hidden x 2 bytes
a layer); the Qwen3-8B shape, 4-bit tiled at 256K. The fit keeps every estimate at or above its
measurement less 1% and makes the largest over-estimate as small as that allows: -1.0% to
+6.4% (+6.4% and +5.6% on the H200's untiled bf16 runs, whose 1B shape peaks 7% below the
H100's at 256K; the 8B QLoRA runs on the H200 -1.0% to +4.3%). An estimate errs high rather
than low: a plan that says "fits" must fit. The widths cannot be told apart from a vocabulary
term with one vocabulary measured, so c_vocab is 0 (TRL's LM head works in chunks).
``bare-unsloth`` (c_vocab 0.8687, c_hidden 18.74, no MLP term: untiled only) is fitted to
GPU-NOTES.md's bare forward+backward with full logits: Llama-3.2-1B bf16 LoRA r16
(7.1/11.6/20.8/39.1 GiB at 32K/64K/128K/256K) and Llama-3.1-8B QLoRA r32 (11.9/17.6/29.1/52.1
GiB), within 3% of all eight points. HF gradient checkpointing keeps every layer's input on the
GPU (+2 x layers x hidden bytes per token); no checkpointing is not modelled.

**Context parallel** (``--context-parallel N``, ``train/context_parallel.py``): each of the N
GPUs holds 1/N of the row's tokens. The path is plain transformers + PEFT with its own
offloaded checkpoints, lean RMSNorm and bf16 LoRA inputs (``lean_activations``) and, with
``--tiled-mlp``, its own tiled MLP, so it has its own per-token cost, paid per local token
(tokens/N), and attention's full-row working set for heads/N (the same per local token)::

    per local token = CP_HIDDEN_COEF x hidden                   (13.4)
                    + CP_MLP_COEF x intermediate, untiled only  (8.13)
                    + CP_ATTENTION_COEF x head_dim x (heads + kv_heads) x 2   (3.75)
                    + 2 x layers x hidden with --gradient-checkpointing true
    per GPU = fixed + max(tokens/N x per local token,
                          LOSS_CHUNK x vocab x 13 bytes + tokens/N x 6 x hidden
                          (+ 2 x layers x hidden with --gradient-checkpointing true))

The peak is either the rerun of one layer in the backward pass (long rows) or the loss's chunk
of logits beside the slice's final hidden states, the last layer's output and their gradient
(short rows). Calibrated on 2 x H200 with the tiled MLP (benchmarks/results/multi_gpu.json,
commit 74b76d6: the chunked lean norm, the embeddings and rerun outputs freed): Llama-3.2-1B
9.85 / 10.98 / 13.67 / 24.81 / 107.63 GiB per GPU at 64K / 256K / 512K / 1M / 4M tokens (the
last with 2 layers' checkpoints kept on the GPUs), estimated +6.5% / +5.8% / +2.3% / +2.3% /
+1.9%; Llama-3.1-8B 23.24 / 24.01 / 26.79 / 37.89 GiB at 64K / 128K / 256K / 512K, +3.6% /
+3.4% / +1.5% / +1.8%. The two shapes have the same proportions of hidden to head_dim x
(heads + kv_heads), so the split between the two coefficients is the one a CPU ledger of the
peak's tensors gives (benchmarks/cp_memory.py: 10 x hidden and 6 x heads x head_dim + 4 x
kv_heads x head_dim bytes a local token), scaled by 1.25 to the GPUs' peaks. CP_MLP_COEF is
what the tiled MLP removes, counted with saved-tensor hooks on a 1B layer on a CPU (94.2 vs
27.6 KB a token), not measured on a GPU since. Host RAM for offloaded checkpoints is the
formula below for the whole row (the N processes share the host).

**Host memory** for offloaded checkpoints: layers x tokens x hidden x 2 bytes, plus 16 GiB for
everything else (the 8B run at 409,600 tokens: 100 GiB of checkpoints, 103.6 GiB peak RSS).
Where the host holds fewer layers than the model has, the first layers keep their checkpoints on
the GPU (:func:`plan_offload`), if the GPU has room for them beside the estimated peak. The host's
memory is ``--host-memory-gib`` or :func:`host_memory_bytes`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

GIB = 2**30
LORA_BYTES_PER_PARAM = 10
OVERHEAD_BYTES = int(0.1 * GIB)


@dataclass(frozen=True)
class Calibration:
    """Peak GPU bytes per token of the row, per unit of the model's widths (module docstring)."""

    vocab: float
    hidden: float
    mlp: float  # per intermediate unit, without the tiled MLP
    models_tiled_mlp: bool = True  # the MLP term is separate: the tiled MLP drops it


CALIBRATIONS = {
    # train.launch (TRL SFTTrainer's fused LM head never materialises the logits), measured here
    "launcher": Calibration(vocab=0.0, hidden=29.91, mlp=4.62),
    # bare Unsloth forward+backward with full logits (GPU-NOTES.md): the MLP is in c_hidden
    "bare-unsloth": Calibration(vocab=0.8687, hidden=18.74, mlp=0.0, models_tiled_mlp=False),
}
# Families whose attention normalises q and k per head (QK-norm): the normalised q and k (bf16)
# are kept for the backward pass, QK_NORM_BYTES per element a token.
QK_NORM_TYPES = (
    "qwen3", "qwen3_moe", "qwen3_next", "gemma3", "gemma3_text", "olmo2", "olmo3", "olmoe",
)  # fmt: skip
QK_NORM_BYTES = 2
# Offloaded checkpoints keep each decoder layer's input (bf16) in host RAM; pinned buffers are
# rounded up to a power of two by torch's caching host allocator. Pinned stays on while the
# rounded buffers take at most PINNED_SHARE of host RAM; offloading needs HOST_HEADROOM_BYTES of
# host RAM beside the buffers (Python, the CUDA context, the loaded model).
PINNED_SHARE = 0.5
HOST_HEADROOM_BYTES = 16 * GIB
GC_UNSLOTH_REQUIRED_ABOVE = 32768
# Context parallel (see the module docstring): the attention's full-sequence working set, in
# units of tokens x head_dim x (heads + kv_heads)/N x 2 bytes, and the loss's chunk of logits.
CP_ATTENTION_COEF = 3.75
CP_HIDDEN_COEF = 13.4  # bytes per hidden unit a local token (module docstring)
CP_MLP_COEF = 8.13  # bytes per intermediate unit a local token without the tiled MLP
CP_LOSS_CHUNK = 4096  # = train.context_parallel.LOSS_CHUNK (this module imports no torch)
CP_MLP_CHUNK = 8192  # = train.context_parallel.MLP_CHUNK: tokens of one tile of the tiled MLP
CP_LOSS_CHUNK_BYTES_PER_VOCAB = 13
# Beside the loss's chunk of logits, the slice's final hidden states, the last layer's output
# (the final norm's input) and their gradient: 3 bf16 tensors of hidden a local token.
CP_LOSS_HIDDEN_BYTES = 6
# Model families whose causal-LM head is logits = lm_head(hidden) and whose attention module
# takes transformers' AttentionInterface (what the context-parallel path relies on).
CP_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


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
    qk_norm: bool = False  # q and k normalised per head (QK_NORM_TYPES, or use_qk_norm)

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
            qk_norm=cfg.get("model_type") in QK_NORM_TYPES or bool(cfg.get("use_qk_norm")),
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
    from transforms.hub import hub_problem, looks_like_hub_id

    path = Path(model).expanduser()
    cfg_path = path / "config.json" if path.is_dir() else None
    if cfg_path is None or not cfg_path.is_file():
        if path.exists():
            raise PlanError(f"--model {model}: no config.json there")
        if not looks_like_hub_id(model, ("config.json",)):
            raise PlanError(
                f"--model {model}: no such folder here, and not a Hub id (owner/name, whose "
                "owner is no folder here)"
            )
        problem = hub_problem(model, ("config.json",))
        if problem:
            raise PlanError(
                f"--model {model}: no such folder here, and as a Hub id {problem}; pass a local "
                "model folder, or download it once where the Hub is reachable and set "
                "HF_HUB_OFFLINE=1"
            )
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
    method: str = "none"  # the scaling the run trains with: none, linear, yarn, llama3, ntk
    source: str = ""  # why that scaling: the model family's recommendation, or the flag
    # What the trained model's config.json holds (train.export writes it, the CPU path loads it):
    # {"rope_scaling": dict | None, "rope_theta": float, "max_position_embeddings": int};
    # None = the model's own settings (no scaling).
    config: dict | None = None


# Past the native window, each family's own recommendation (``--rope-scaling auto``).
QWEN_FAMILIES = ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe")
QWEN_SOURCE = (
    "Qwen's model cards (Qwen2.5, Qwen3): YaRN beyond the native window, rope_scaling "
    "{rope_type: yarn, factor, original_max_position_embeddings}"
)
QWEN3_NATIVE = 32768  # Qwen3 card: 32,768 natively; config.json's 40,960 leaves room to generate
LLAMA3_SOURCE = (
    "the model's config.json: llama3 scaling (Meta's Llama 3.1+ recipe); Unsloth keeps it and "
    "widens the window"
)
LINEAR_SOURCE = "no family recommendation: Unsloth's default, linear target/native"


def yarn_original(shape: ModelShape) -> int:
    """The window YaRN scales from: Qwen3's card gives 32,768 where config.json says 40,960."""
    if shape.model_type.startswith("qwen3") and shape.max_position_embeddings == 40960:
        return QWEN3_NATIVE
    return shape.max_position_embeddings


def _existing_rope(shape: ModelShape) -> str | None:
    rope = shape.rope_scaling or {}
    return rope.get("rope_type") or rope.get("type")


def family_rope(shape: ModelShape) -> tuple[str, str]:
    """(method, source): the scaling the model's family recommends past its native window.
    Llama 3.1+ keeps its llama3 scaling, Qwen2/Qwen3 take YaRN, any other model Unsloth's
    linear rule."""
    if _existing_rope(shape) == "llama3":
        return "llama3", LLAMA3_SOURCE
    if shape.model_type in QWEN_FAMILIES:
        return "yarn", QWEN_SOURCE
    return "linear", LINEAR_SOURCE


def _check_rope_mode(shape: ModelShape, target: int, mode: str) -> None:
    native = shape.max_position_embeddings
    if mode not in ("auto", "none", "linear", "yarn", "dynamic", "llama3", "ntk"):
        raise PlanError(
            f"--rope-scaling {mode}: expected auto, none, linear, yarn, dynamic, llama3 or ntk"
        )
    if shape.model_type in ("gemma", "gemma2") and mode not in ("auto", "none"):
        raise PlanError(
            f"--rope-scaling {mode}: Unsloth ignores RoPE scaling on {shape.model_type}; use auto or none"
        )
    if mode == "none" and target > native:
        raise PlanError(
            f"--rope-scaling none with --max-seq-length {target} > the model's native "
            f"{native}: positions past {native} were never trained; use auto, linear or yarn"
        )
    if mode == "dynamic":
        raise PlanError(
            "--rope-scaling dynamic: Unsloth ignores it (logs a warning and trains unscaled); "
            "use linear, yarn, llama3 or ntk"
        )
    if mode == "llama3" and _existing_rope(shape) != "llama3":
        raise PlanError(
            f"--rope-scaling llama3: the model has {_existing_rope(shape) or 'no'} scaling, not llama3"
        )


def _scaled_rope(shape: ModelShape, target: int, mode: str, method: str, source: str) -> RopePlan:
    """The plan for one scaling ``method`` (linear, yarn, llama3 or ntk) to ``target``."""
    native = shape.max_position_embeddings
    factor = max(1.0, target / native)
    config = {
        "rope_scaling": None,
        "rope_theta": shape.rope_theta,
        "max_position_embeddings": max(target, native),
    }
    unsloth: dict | None
    if method == "linear":
        unsloth = {"rope_type": "linear", "factor": factor}
        note = f"linear, factor {factor:.3g} = {target}/{native}"
        # vLLM derives the window as max_position_embeddings x factor: keep the native one
        config.update(rope_scaling=unsloth, max_position_embeddings=native)
    elif method == "yarn":
        original = yarn_original(shape)
        factor = max(1.0, target / original)
        unsloth = {
            "rope_type": "yarn",
            "factor": factor,
            "original_max_position_embeddings": original,
        }
        note = f"YaRN, factor {factor:.3g} = {target}/{original}"
        config.update(rope_scaling=unsloth, max_position_embeddings=max(target, original))
    elif method == "llama3":
        unsloth = None
        note = f"keeps the model's llama3 scaling; Unsloth widens the window to {target}"
        config["rope_scaling"] = dict(shape.rope_scaling or {})
    else:  # ntk
        d = shape.head_dim
        theta = shape.rope_theta * factor ** (d / (d - 2))
        unsloth = {"rope_type": "linear", "factor": 1.0, "rope_theta": theta}
        note = f"NTK-aware base: rope_theta {shape.rope_theta:g} -> {theta:.6g} (s={factor:.3g}, d={d})"
        config["rope_theta"] = theta
    if mode == "auto" and method == "linear":
        unsloth = None  # Unsloth's own rule past the window is this linear scaling
    return RopePlan(mode, native, target, factor, unsloth, note, method, source, config)


def plan_rope(shape: ModelShape, target: int, mode: str = "auto") -> RopePlan:
    """The RoPE scaling for ``target`` tokens. ``auto``: none within the model's window, past
    it the family's recommendation (:func:`family_rope`); an explicit mode is taken as asked.
    ``dynamic`` (and any scaling on Gemma) is refused: Unsloth ignores it."""
    mode = mode.lower()
    _check_rope_mode(shape, target, mode)
    native = shape.max_position_embeddings
    if mode in ("auto", "none") and target <= native:
        return RopePlan(
            mode, native, target, 1.0, None, "within the native window: no scaling", "none"
        )
    if mode == "auto":
        method, source = family_rope(shape)
    else:
        method, source = mode, f"--rope-scaling {mode}"
    return _scaled_rope(shape, target, mode, method, source)


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
    tiled_mlp: bool = False,
) -> float:
    """Peak GPU bytes a token of the row; the same for bf16 LoRA and 4-bit QLoRA (the
    module docstring: they differ in the fixed part only)."""
    cal = CALIBRATIONS[calibration]
    if tiled_mlp and not cal.models_tiled_mlp:
        raise ValueError(f"the {calibration} calibration does not model the tiled MLP")
    b = cal.vocab * shape.vocab_size + cal.hidden * shape.hidden_size
    if not tiled_mlp:
        b += cal.mlp * shape.intermediate_size
    if shape.qk_norm:
        b += (
            QK_NORM_BYTES * (shape.num_attention_heads + shape.num_key_value_heads) * shape.head_dim
        )
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
        + tokens * per_token_bytes(shape, gc, calibration, tiled_mlp)
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
    per_token = per_token_bytes(shape, gc, calibration, tiled_mlp)
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
    # layers whose checkpoints stay on the GPU because the host cannot hold them all (the first
    # ones; train.context_parallel.keep_checkpoints_on_gpu), and their bytes per GPU
    gpu_layers: int = 0
    gpu_bytes: int = 0


def plan_offload(
    shape: ModelShape,
    tokens: int,
    gc: str | bool,
    host_bytes: int,
    pinned: str = "auto",
    gpu_room_bytes: int = 0,
    ranks: int = 1,
    processes: int = 1,
) -> OffloadPlan | None:
    """Host RAM for ``use_gradient_checkpointing="unsloth"``: every decoder layer's input is
    copied to host memory in the forward pass and read back in the backward pass.

    When the host cannot hold every layer's checkpoint, the first layers keep theirs on the GPU
    (as many as the host is short of, no more: host copies cost no GPU memory), if
    ``gpu_room_bytes`` (per GPU: what 95% of the GPU leaves beside the estimated peak) holds
    them. ``ranks``: the processes that split the row (context parallel): each keeps its
    1/ranks of a kept layer, while the host holds the whole row's other layers.
    ``processes``: data-parallel processes on this host, each offloading a row of its own.
    With ``pinned`` "true" each layer's buffer counts rounded up to a power of two (torch's
    caching host allocator)."""
    if gc != "unsloth":
        return None
    layers = shape.num_hidden_layers
    per_layer = tokens * shape.hidden_size * 2
    pow2 = 1 << max(0, per_layer - 1).bit_length()
    mode = str(pinned).lower()
    # what one offloaded layer takes of the host, over all the processes that offload here
    per_layer_host = (pow2 if mode == "true" else per_layer) * processes
    per_layer_gpu = -(-tokens // ranks) * shape.hidden_size * 2
    room = host_bytes - HOST_HEADROOM_BYTES
    layer_budget = max(0, room) // (layers * processes)  # host bytes for one layer's buffer
    if mode == "true" and layer_budget:  # the largest power of two that fits, not the budget
        layer_budget = 1 << (layer_budget.bit_length() - 1)
    max_host = layer_budget // (shape.hidden_size * 2) // 1024 * 1024
    gpu_layers = 0
    if host_bytes and layers * per_layer_host > room:
        gpu_layers = min(layers, -(-(layers * per_layer_host - max(0, room)) // per_layer_host))
        if gpu_layers * per_layer_gpu > gpu_room_bytes:
            raise PlanError(
                f"offloaded checkpoints at {tokens} tokens need "
                f"{layers * per_layer_host / GIB:.1f} GiB ({layers} layers x "
                f"{per_layer_host / GIB:.2f} GiB"
                f"{f', {processes} processes' if processes > 1 else ''}) plus "
                f"{HOST_HEADROOM_BYTES // GIB} GiB beside them in host RAM, which has "
                f"{host_bytes / GIB:.0f} GiB here (the largest context it holds is about "
                f"{max_host}), and the {gpu_layers} layers it cannot hold "
                f"({gpu_layers * per_layer_gpu / GIB:.1f} GiB per GPU) do not fit the "
                f"{max(0, gpu_room_bytes) / GIB:.1f} GiB the GPU has left: lower "
                "--max-seq-length, or set --host-memory-gib if this machine has more memory "
                "than it reports"
            )
    on_host = layers - gpu_layers
    need = on_host * per_layer * processes
    rounded = on_host * pow2 * processes
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
    if processes > 1:
        note += f", for {processes} processes"
    if gpu_layers:
        note += (
            f"; the first {gpu_layers} of {layers} layers keep theirs on the GPU "
            f"({gpu_layers * per_layer_gpu / GIB:.1f} GiB{' per GPU' if ranks > 1 else ''}): "
            "the host cannot hold them all"
        )
    return OffloadPlan(
        need, rounded, host_bytes, use_pinned, int(max_host), note,
        gpu_layers, gpu_layers * per_layer_gpu,
    )  # fmt: skip


@dataclass
class StepPlan:
    per_device_batch_size: int
    gradient_accumulation_steps: int
    tokens_per_step: int
    samples: int
    # the share of the data the steps go through: what the Trainer's state.epoch reads at the end
    epochs: float
    steps: int
    warmup_steps: int = 0
    micro_batches_per_epoch: int = 0  # per process: the Trainer's len(train_dataloader)
    samples_seen: int = 0  # epochs x samples, rounded
    warnings: list[str] = field(default_factory=list)  # what was clamped, and why


def _clamped_accumulation(
    accum: int, micro: int, samples: int, rows: int, seq_len: int
) -> tuple[int, str]:
    """Gradient accumulation of at most one epoch's micro-batches: more would make one optimizer
    step pass over the same rows twice (and the Trainer count two epochs for it)."""
    if accum <= micro:
        return accum, ""
    return micro, (
        f"gradient accumulation {accum} is more than the {micro} micro-batches an epoch holds "
        f"({samples} samples, {rows} a micro-batch): clamped to {micro}, so a step is one pass "
        f"over the data ({rows * micro * seq_len} tokens); add data or lower --tokens-per-step"
    )


def _clamped_warmup(warmup: int, steps: int) -> tuple[int, str]:
    """A warmup as long as the run never reaches the peak learning rate: clamp it to a tenth."""
    if warmup < steps or warmup <= 0:
        return warmup, ""
    short = steps // 10
    return short, (
        f"--warmup-steps {warmup} is not shorter than the run's {steps} steps: the learning rate "
        f"would never reach its peak; warmup clamped to {short} (a tenth of the steps)"
        + (f"; choose one below {steps} with --warmup-steps" if steps > 1 else "")
    )


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
    warmup_steps: int = 0,
) -> StepPlan:
    """Batch, accumulation, steps, warmup and the real epoch fraction, by the Trainer's rules
    (transformers 5): each process's data loader holds ``ceil(ceil(samples / batch) /
    world_size)`` micro-batches an epoch; a step takes ``accum`` of them, the last step of an
    epoch the remainder; ``--num-train-epochs`` E gives ``ceil(E x steps per epoch)`` steps. With
    ``world_size`` processes (one per GPU) a step sees ``batch x accum x world_size`` rows."""
    if batch <= 0:
        raise PlanError(f"--per-device-batch-size must be >= 1, got {batch}")
    if world_size <= 0:
        raise PlanError(f"--nproc-per-node must be >= 1, got {world_size}")
    rows = batch * world_size
    micro = math.ceil(math.ceil(samples / batch) / world_size) if samples > 0 else 0
    if accum <= 0:
        accum = max(1, round(tokens_per_step / (rows * seq_len)))
    accum, accum_warning = _clamped_accumulation(accum, max(micro, 1), samples, rows, seq_len)
    per_epoch = math.ceil(micro / accum)
    steps = max_steps if max_steps > 0 else math.ceil(epochs * per_epoch)
    if samples <= 0 or steps <= 0:
        raise PlanError(
            f"the plan has 0 training steps ({samples} samples, --num-train-epochs {epochs}): "
            "nothing to train on; check the pipeline output (python -m pipeline.validate)"
        )
    full, rest = divmod(steps, per_epoch)
    fraction = (full * micro + rest * accum) / micro
    warmup, warmup_warning = _clamped_warmup(warmup_steps, steps)
    return StepPlan(
        batch,
        accum,
        rows * accum * seq_len,
        samples,
        round(fraction, 4),
        steps,
        warmup,
        micro,
        round(fraction * samples),
        [w for w in (accum_warning, warmup_warning) if w],
    )


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


def check_context_parallel(shape: ModelShape, cp: int, model: str = "the model") -> None:
    """Refuse a ``--context-parallel`` that the model's shape cannot split: the all-to-all hands
    each GPU heads/N query heads and kv_heads/N KV heads."""
    if cp < 1:
        raise PlanError(f"--context-parallel must be >= 1, got {cp}")
    if cp == 1:
        return
    if shape.model_type not in CP_MODEL_TYPES:
        raise PlanError(
            f"--context-parallel {cp}: {model} is a {shape.model_type} model; context parallel "
            f"supports {', '.join(CP_MODEL_TYPES)}"
        )
    h, kv = shape.num_attention_heads, shape.num_key_value_heads
    if h % cp or kv % cp:
        raise PlanError(
            f"--context-parallel {cp}: {model} has {h} attention heads and {kv} KV heads; both "
            f"must divide by {cp} (each GPU attends with heads/{cp} over the whole row); use a "
            f"--context-parallel that divides {math.gcd(h, kv)}"
        )


def cp_local_token_bytes(
    shape: ModelShape, gc: str | bool = "unsloth", tiled_mlp: bool = False
) -> float:
    """Bytes per GPU per token of its 1/N of the row (the module docstring's formula)."""
    b = CP_HIDDEN_COEF * shape.hidden_size
    if not tiled_mlp:
        b += CP_MLP_COEF * shape.intermediate_size
    heads = shape.num_attention_heads + shape.num_key_value_heads
    b += CP_ATTENTION_COEF * shape.head_dim * heads * 2
    if gc is True:
        b += 2 * shape.num_hidden_layers * shape.hidden_size
    return b


def cp_loss_bytes(shape: ModelShape) -> int:
    """The loss's chunk of logits: bf16 logits, their float32 copy and gradient."""
    return CP_LOSS_CHUNK * shape.vocab_size * CP_LOSS_CHUNK_BYTES_PER_VOCAB


def cp_loss_token_bytes(shape: ModelShape, gc: str | bool = "unsloth") -> int:
    """Bytes per local token beside the loss's chunk of logits: the final hidden states, the
    last layer's output and their gradient, and with ``--gradient-checkpointing true`` every
    layer's input, kept on the GPU until the backward pass reaches it."""
    b = CP_LOSS_HIDDEN_BYTES * shape.hidden_size
    if gc is True:
        b += 2 * shape.num_hidden_layers * shape.hidden_size
    return b


def estimate_cp_peak_bytes(
    shape: ModelShape,
    tokens: int,
    cp: int,
    *,
    lora_r: int,
    modules: list[str],
    gc: str | bool = "unsloth",
    tiled_mlp: bool = False,
) -> int:
    """Peak bytes per GPU of one micro-step of ``tokens`` split over ``cp`` GPUs (bf16 LoRA:
    see the module docstring)."""
    per_gpu = math.ceil(tokens / cp)
    loss = cp_loss_bytes(shape) + per_gpu * cp_loss_token_bytes(shape, gc)
    return int(
        fixed_bytes(shape, load_in_4bit=False, lora_r=lora_r, modules=modules)
        + max(per_gpu * cp_local_token_bytes(shape, gc, tiled_mlp), loss)
    )


def max_cp_context(
    shape: ModelShape,
    gpu_gib: float,
    cp: int,
    *,
    lora_r: int,
    modules: list[str],
    gc: str | bool = "unsloth",
    headroom: float = 0.95,
    tiled_mlp: bool = False,
) -> int:
    """Largest context (multiple of 1024) whose per-GPU estimate over ``cp`` GPUs fits."""
    room = gpu_gib * GIB * headroom - fixed_bytes(
        shape, load_in_4bit=False, lora_r=lora_r, modules=modules
    )
    if room < cp_loss_bytes(shape):
        return 0
    per_gpu = min(
        room / cp_local_token_bytes(shape, gc, tiled_mlp),
        (room - cp_loss_bytes(shape)) / cp_loss_token_bytes(shape, gc),
    )
    return max(0, int(per_gpu * cp) // 1024 * 1024)


def longest_cp_context(
    shape: ModelShape,
    gpu_gib: float,
    cp: int,
    host_bytes: int,
    *,
    lora_r: int,
    modules: list[str],
    gc: str | bool = "unsloth",
    headroom: float = 0.95,
    tiled_mlp: bool = False,
) -> int:
    """Largest context (multiple of 1024) that ``cp`` GPUs train with ``host_bytes`` of host RAM
    (0: the host holds every checkpoint): the per-GPU estimate plus the checkpoints the host
    cannot hold, kept on the GPUs (:func:`plan_offload`, each rank its 1/cp of a kept layer),
    within ``headroom`` of the GPU. At most :func:`max_cp_context` (the GPU memory alone)."""
    sizes = dict(lora_r=lora_r, modules=modules, gc=gc, tiled_mlp=tiled_mlp)
    cap = gpu_gib * GIB * headroom

    def fits(tokens: int) -> bool:
        peak = estimate_cp_peak_bytes(shape, tokens, cp, **sizes)
        try:
            plan_offload(shape, tokens, gc, host_bytes, "false", int(cap - peak), cp)
        except PlanError:
            return False
        return peak <= cap

    hi = max_cp_context(shape, gpu_gib, cp, headroom=headroom, **sizes)
    if hi <= 0 or fits(hi):
        return hi
    lo = 0  # fits(lo) (a row of no tokens), not fits(hi)
    while hi - lo > 1024:
        mid = (lo + hi) // 2 // 1024 * 1024
        lo, hi = (mid, hi) if mid and fits(mid) else (lo, mid)
    return lo
