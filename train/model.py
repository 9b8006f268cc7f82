"""Loading the model for training: Unsloth on a GPU, or plain transformers + PEFT on a CPU.

Both return ``(model, tokenizer)`` with LoRA adapters applied (``--lora-r`` / ``--lora-alpha`` /
``--target-modules``). ``unsloth`` is imported here, inside :func:`load_unsloth` only, so that
planning, dry runs and CPU runs never need it (it patches transformers on import and must come
before it). RoPE: the plan's ``unsloth_rope_scaling`` is passed to Unsloth (``auto`` passes
the family's recommendation, or nothing where Unsloth's own rule is it, see ``train/plan.py``);
the CPU path sets the plan's ``config`` on the model's config (:func:`apply_rope`), so both train
what ``train.export`` writes into ``config.json``.

The document end: both paths make the data's end-of-text token (the manifest's, see
``train/preflight.py:document_end``) the tokenizer's eos and pad and the model's
``eos_token_id`` / ``pad_token_id`` (:func:`use_document_end`): Unsloth sets Qwen3's eos to
``<|im_end|>``, which no document of the data ends with.
"""

from __future__ import annotations

import os

from train.config import TrainConfig
from train.data import DataError


def unsloth_load_kwargs(plan: dict, world_size: int, local_rank: int) -> dict:
    """Extra ``FastLanguageModel.from_pretrained`` arguments: RoPE scaling and, with more than
    one process, one full replica per GPU (data parallel)."""
    kw = {}
    if plan["rope"]["unsloth_rope_scaling"] is not None:
        kw["rope_scaling"] = plan["rope"]["unsloth_rope_scaling"]
    if world_size > 1:
        kw["device_map"] = {"": local_rank}
    return kw


def apply_rope(config, rope: dict | None) -> None:
    """Set a plan's RoPE ``config`` (``RopePlan.config``: rope_scaling, rope_theta,
    max_position_embeddings) on a transformers config; None leaves it as it is. transformers 5
    keeps RoPE in ``rope_parameters``, 4.x in ``rope_scaling`` and ``rope_theta``."""
    if not rope:
        return
    config.max_position_embeddings = rope["max_position_embeddings"]
    scaling = rope["rope_scaling"]
    if hasattr(config, "rope_parameters"):
        params = dict(scaling) if scaling else {"rope_type": "default"}
        config.rope_parameters = {"rope_theta": rope["rope_theta"], **params}
    else:
        config.rope_scaling = dict(scaling) if scaling else None
        config.rope_theta = rope["rope_theta"]


def use_document_end(model, tokenizer, end: dict | None) -> None:
    """Make the data's document-end token (``plan["document_end"]``) the tokenizer's eos and
    pad, the model config's eos/pad ids and the first stop id of its generation config (any
    other stop ids, such as a chat model's ``<|im_end|>``, stay after it). None: no change."""
    if not end:
        return
    if tokenizer.convert_ids_to_tokens(end["id"]) != end["token"]:
        raise DataError(
            f"the data ends documents with {end['token']} (id {end['id']}), which the model's "
            f"tokenizer calls {tokenizer.convert_ids_to_tokens(end['id'])!r}; re-run the "
            "pipeline with --tokenizer <the model>"
        )
    tokenizer.eos_token = end["token"]
    tokenizer.pad_token = end["token"]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.config.eos_token_id = end["id"]
    base.config.pad_token_id = end["id"]
    gen = getattr(base, "generation_config", None)
    if gen is not None:
        old = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
        stops = [end["id"], *(i for i in old if i is not None and i != end["id"])]
        gen.eos_token_id = stops if len(stops) > 1 else stops[0]
        gen.pad_token_id = end["id"]


def load_unsloth(cfg: TrainConfig, plan: dict):
    """Unsloth ``FastLanguageModel`` at ``max_seq_length`` with LoRA and the plan's
    gradient checkpointing (``"unsloth"``: offloaded to host RAM; the first
    ``offload.gpu_layers`` layers, which the host has no room for, keep theirs on the GPU, set
    when training begins by ``train.context_parallel.make_checkpoint_keeper``: the Trainer
    re-arms every layer's checkpoint function in ``train()``)."""
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
    use_document_end(model, tokenizer, plan["document_end"])
    return model, tokenizer


def load_transformers(cfg: TrainConfig, plan: dict):
    """``AutoModelForCausalLM`` with SDPA attention and a PEFT LoRA (bf16 on a GPU, fp32 on a
    CPU), with the plan's RoPE settings; CPU tests, comparisons, and ``--context-parallel``
    (attention ``train.context_parallel.ATTENTION``)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    config = AutoConfig.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    apply_rope(config, plan["rope"]["config"])
    attention = "sdpa"
    if (plan.get("context_parallel") or {}).get("size", 1) > 1:
        from train.context_parallel import register_attention

        attention = register_attention()  # the row split over the group: Ulysses all-to-all
    model = AutoModelForCausalLM.from_pretrained(
        cfg.model,
        config=config,
        dtype=dtype,
        attn_implementation=attention,
        trust_remote_code=cfg.trust_remote_code,
    )
    # transformers keeps packed documents apart (block-diagonal mask from position_ids) only when
    # no KV cache is built: with use_cache=True a document attends to the ones before it.
    model.config.use_cache = False
    if plan["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        if attention != "sdpa" and plan["gradient_checkpointing"] == "unsloth":
            from train.context_parallel import offload_checkpoints

            # layer inputs in host RAM, as Unsloth's "unsloth" mode (but those it cannot hold)
            offload_checkpoints(model, (plan["memory"]["offload"] or {}).get("gpu_layers", 0))
    if cfg.tiled_mlp:
        from train.context_parallel import tile_mlps

        tile_mlps(model)  # the MLP over the sequence in tiles, as Unsloth's tiled MLP
    torch.manual_seed(cfg.seed)  # the LoRA initialisation, as Unsloth's random_state
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
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    use_document_end(model, tokenizer, plan["document_end"])
    return model, tokenizer


def load_model(cfg: TrainConfig, plan: dict, backend: str = "unsloth"):
    """``(model, tokenizer)`` for ``backend`` 'unsloth' (default) or 'transformers'."""
    if backend == "unsloth":
        return load_unsloth(cfg, plan)
    return load_transformers(cfg, plan)
