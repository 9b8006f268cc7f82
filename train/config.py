"""One training run's configuration: a YAML file plus command-line overrides.

Every field carries its help text (``metadata["help"]``); the CLI is generated from the fields,
so a YAML key and a flag always mean the same thing (``max_seq_length`` <-> ``--max-seq-length``).
Precedence: dataclass default < YAML file < command-line flag. The YAML rules (keys = flag
names with ``-`` or ``_``, an unknown key named with the nearest known one) are the pipeline's
too (``schemas/settings.py``); paths in a training YAML stay relative to the working directory.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path

from schemas.settings import SettingsError, check_keys, read_yaml, yaml_keys
from train.data import ATTENTION_MODES


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


# Named bundles of settings (``--preset NAME``): defaults < preset < YAML file < flags.
PRESETS: dict[str, dict] = {
    # The longest context one GPU reaches: 4-bit base weights, offloaded checkpoints, tiled MLP.
    # Measured: Llama-3.1-8B shape at 409,600 tokens on one H100 80GB (docs/benchmarks.md).
    "max-context": {
        "_about": "4-bit QLoRA r32, offloaded checkpoints, tiled MLP: 8B at 400K on 80 GB",
        "load_in_4bit": True,
        "lora_r": 32,
        "lora_alpha": 32,
        "gradient_checkpointing": "unsloth",
        "tiled_mlp": True,
        "offload_pinned": "auto",
        "per_device_batch_size": 1,
    },
}


@dataclass
class TrainConfig:
    data: str = _f("", "finished pipeline output folder (holds manifest.json)")
    model: str = _f("", "model folder or Hub id (Llama-3, Qwen3, Mistral...)")
    eval_data: str = _f(
        "",
        "pipeline output whose validation split (shards/validation-*, made with the pipeline's "
        "--eval-fraction) gives the validation loss during training; may equal --data; "
        "'' = no evaluation",
    )
    eval_steps: int = _f(
        0,
        "evaluate on --eval-data every N optimizer steps, and after the last; "
        "0 = only after the last step",
    )
    output_dir: str = _f("runs/longctx", "where checkpoints and logs go")
    max_seq_length: int = _f(0, "context length in tokens; 0 = the manifest's seq_len")
    rope_scaling: str = _f(
        "auto", "auto | none | linear | yarn | dynamic | llama3 | ntk (new rope_theta)"
    )
    attention: str = _f(
        "per-document",
        "per-document | stream: per-document keeps packed documents apart (positions restart at "
        "every seq_lengths boundary); stream makes each row one causal stream with attention "
        "across its documents (for ablations: the naive concatenate-and-chunk baseline)",
    )
    load_in_4bit: bool = _f(False, "QLoRA: 4-bit base weights (bitsandbytes NF4)")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(16, "LoRA alpha")
    lora_dropout: float = _f(0.0, "LoRA dropout (0 keeps Unsloth's fast path)")
    target_modules: tuple = _f(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        "modules that get LoRA adapters",
    )
    gradient_checkpointing: str = _f(
        "unsloth", "unsloth | true | false; 'unsloth' (offloaded) is mandatory above 32768 tokens"
    )
    tiled_mlp: bool = _f(
        False,
        "tiled MLP (Arctic long-sequence training; Unsloth's, or this project's own on the "
        "transformers and context-parallel paths): the MLP runs over the sequence in tiles, so "
        "its activations stop growing with the context; slower, needed past ~390K on 8B",
    )
    offload_pinned: str = _f(
        "auto",
        "auto | true | false: page-lock the host buffers of offloaded checkpoints (faster copies); "
        "torch rounds each to a power of two, so auto turns it off when that would crowd host RAM",
    )
    host_memory_gib: float = _f(
        0.0, "host RAM that offloaded checkpoints may use; 0 = this machine's physical memory"
    )
    per_device_batch_size: int = _f(
        1, "packed rows per device per micro-step (rows are flattened, padding-free)"
    )
    tokens_per_step: int = _f(
        524288, "target tokens per optimizer step; sets gradient accumulation"
    )
    gradient_accumulation_steps: int = _f(0, "0 = from tokens_per_step")
    nproc_per_node: int = _f(
        1, "processes (GPUs) on this machine; > 1 starts them with torchrun (data parallel)"
    )
    context_parallel: int = _f(
        1,
        "GPUs that split each row's tokens (DeepSpeed-Ulysses sequence parallelism, for a context "
        "longer than one GPU holds); > 1 starts them with torchrun, trains with plain "
        "transformers + PEFT, and needs attention and KV heads that divide by it; packed rows "
        "keep per-document attention; --nproc-per-node must be 1 or the same number",
    )
    learning_rate: float = _f(2e-4, "peak learning rate")
    lr_scheduler: str = _f("cosine", "transformers scheduler name")
    warmup_steps: int = _f(5, "linear warmup steps")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    optim: str = _f("adamw_8bit", "optimizer (transformers name); adamw_torch on CPU")
    num_train_epochs: float = _f(1.0, "passes over the samples")
    max_steps: int = _f(-1, "stop after this many optimizer steps (-1 = epochs decide)")
    seed: int = _f(3407, "random seed (data order, LoRA init)")
    logging_steps: int = _f(1, "log every N steps")
    save_steps: int = _f(0, "checkpoint every N steps (0 = only at the end)")
    resume_from_checkpoint: str = _f(
        "",
        "continue a stopped run: 'last' = the newest checkpoint-N in --output-dir, or a "
        "checkpoint folder's path; the same data and settings give the same final step count",
    )
    gpu_memory_gib: float = _f(80.0, "memory of the target GPU, for the plan and the fit check")
    allow_tokenizer_mismatch: bool = _f(
        False, "train even if the data's tokenizer differs from the model's"
    )
    skip_validation: bool = _f(
        False, "do not re-check the output folder's invariants before loading"
    )
    trust_remote_code: bool = _f(False, "let transformers run code from the model repository")
    preset: str = _f(
        "",
        "named settings applied before the YAML file and flags: "
        + ", ".join(f"'{k}' ({v['_about']})" for k, v in PRESETS.items()),
    )

    def resolved_gc(self) -> str | bool:
        v = str(self.gradient_checkpointing).lower()
        return {"unsloth": "unsloth", "true": True, "false": False}.get(v, v)


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says what to change."""


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = type(f.default) if f.default is not dataclasses.MISSING else str
        help_ = f"{f.metadata['help']} (default {f.default!r})"
        if kind is bool:
            parser.add_argument(
                flag, dest=f.name, type=_parse_bool, default=None, metavar="BOOL", help=help_
            )
        elif kind is tuple:
            parser.add_argument(flag, dest=f.name, nargs="+", default=None, help=help_)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=help_)


def load_config(path: str | None, overrides: dict) -> TrainConfig:
    """Defaults < YAML file < overrides (the non-None values of parsed flags)."""
    values: dict = {}
    if path:
        if not Path(path).is_file():
            raise ConfigError(f"--config {path}: no such file")
        try:
            loaded = read_yaml(path)
            check_keys(path, loaded, yaml_keys(TrainConfig))
        except SettingsError as err:
            raise ConfigError(str(err)) from None
        loaded = {str(k).replace("-", "_"): v for k, v in loaded.items()}
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    preset = values.get("preset") or ""
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"--preset {preset}: expected one of {', '.join(PRESETS)}")
        values = {
            **{k: v for k, v in PRESETS[preset].items() if not k.startswith("_")},
            **values,
        }
    if "target_modules" in values:
        values["target_modules"] = tuple(values["target_modules"])
    cfg = TrainConfig(**values)
    if not cfg.data:
        raise ConfigError("--data is required: a finished pipeline output folder")
    if not cfg.model:
        raise ConfigError("--model is required: a model folder or Hub id")
    if str(cfg.offload_pinned).lower() not in ("auto", "true", "false"):
        raise ConfigError(f"--offload-pinned {cfg.offload_pinned}: expected auto, true or false")
    if cfg.eval_steps < 0:
        raise ConfigError(f"--eval-steps {cfg.eval_steps}: expected N >= 0 optimizer steps")
    if cfg.eval_steps and not cfg.eval_data:
        raise ConfigError(
            "--eval-steps needs --eval-data: a pipeline output with a validation split"
        )
    if cfg.context_parallel < 1:
        raise ConfigError(f"--context-parallel {cfg.context_parallel}: expected N >= 1 GPUs")
    if cfg.context_parallel > 1:
        _check_context_parallel(cfg)
    if cfg.attention not in ATTENTION_MODES:
        raise ConfigError(f"--attention {cfg.attention}: expected {' or '.join(ATTENTION_MODES)}")
    return cfg


def _check_context_parallel(cfg: TrainConfig) -> None:
    """What ``--context-parallel N`` > 1 cannot be combined with (the message says why)."""
    cp = cfg.context_parallel
    if cfg.nproc_per_node not in (1, cp):
        raise ConfigError(
            f"--nproc-per-node {cfg.nproc_per_node} with --context-parallel {cp}: data parallel "
            f"beside context parallel is not supported; use --nproc-per-node {cp} (or leave it "
            f"out): the {cp} processes split each row"
        )
    if cfg.load_in_4bit:
        raise ConfigError(
            f"--load-in-4bit with --context-parallel {cp}: the context-parallel path (plain "
            "transformers + PEFT) loads bf16 weights; use --load-in-4bit false"
        )
