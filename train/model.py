"""Loading the model for training: Unsloth on a GPU, or plain transformers + PEFT on a CPU.

Both return ``(model, tokenizer)`` with LoRA adapters applied (``--lora-r`` / ``--lora-alpha`` /
``--target-modules``). ``unsloth`` is imported here, inside :func:`load_unsloth` only, so that
planning, dry runs and CPU runs never need it (it patches transformers on import and must come
before it). RoPE: the plan's ``unsloth_rope_scaling`` is passed to Unsloth (``auto`` passes
nothing and lets Unsloth scale to ``max_seq_length`` by its own rule, see ``train/plan.py``).
"""

from __future__ import annotations

import os

from train.config import TrainConfig


def unsloth_load_kwargs(plan: dict, world_size: int, local_rank: int) -> dict:
    """Extra ``FastLanguageModel.from_pretrained`` arguments: RoPE scaling and, with more than
    one process, one full replica per GPU (data parallel)."""
    kw = {}
    if plan["rope"]["unsloth_rope_scaling"] is not None:
        kw["rope_scaling"] = plan["rope"]["unsloth_rope_scaling"]
    if world_size > 1:
        kw["device_map"] = {"": local_rank}
    return kw


def load_unsloth(cfg: TrainConfig, plan: dict):
    """Unsloth ``FastLanguageModel`` at ``max_seq_length`` with LoRA and the plan's
    gradient checkpointing (``"unsloth"``: offloaded to host RAM)."""
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    offload = plan["memory"]["offload"]
    if offload and not offload["pinned"]:
        # read by unsloth_zoo.gradient_checkpointing when its offload buffers are made
        os.environ["UNSLOTH_DISABLE_PINNED_MEMORY"] = "1"
    import unsloth  # noqa: F401  (must come before transformers)
    from unsloth import FastLanguageModel

    L = plan["max_seq_length"]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=cfg.model,
        max_seq_length=L,
        load_in_4bit=cfg.load_in_4bit,
        dtype=None,
        trust_remote_code=cfg.trust_remote_code,
        unsloth_tiled_mlp=cfg.tiled_mlp,
        **unsloth_load_kwargs(plan, world, local_rank),
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        use_gradient_checkpointing=plan["gradient_checkpointing"],
        random_state=cfg.seed,
        max_seq_length=L,
    )
    return model, tokenizer


def load_transformers(cfg: TrainConfig, plan: dict):
    """``AutoModelForCausalLM`` with SDPA attention and a PEFT LoRA (bf16 on a GPU, fp32 on a
    CPU); CPU tests and comparisons. RoPE scaling is not applied on this path."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        cfg.model,
        dtype=dtype,
        attn_implementation="sdpa",
        trust_remote_code=cfg.trust_remote_code,
    )
    # transformers keeps packed documents apart (block-diagonal mask from position_ids) only when
    # no KV cache is built: with use_cache=True a document attends to the ones before it.
    model.config.use_cache = False
    if plan["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(
        model,
        LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules),
            task_type="CAUSAL_LM",
        ),
    )
    return model, AutoTokenizer.from_pretrained(cfg.model)


def load_model(cfg: TrainConfig, plan: dict, backend: str = "unsloth"):
    """``(model, tokenizer)`` for ``backend`` 'unsloth' (default) or 'transformers'."""
    if backend == "unsloth":
        return load_unsloth(cfg, plan)
    return load_transformers(cfg, plan)
