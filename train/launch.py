"""Train on a finished pipeline output with Unsloth at long context.

    python -m train.launch --data out --model unsloth/Llama-3.2-1B --dry-run
    python -m train.launch --config configs/llama-3.2-1b-64k.yaml --max-steps 50

Before any weights load it reads the manifest, re-checks the output folder's invariants, reads
the model's config.json, plans RoPE scaling, memory and steps, and refuses what cannot work
(shards longer than --max-seq-length, a tokenizer that does not match the model, a plan that does
not fit --gpu-memory-gib, checkpointing other than "unsloth" above 32K). ``--dry-run`` prints the
plan and stops; it needs neither a GPU nor Unsloth. Exit status: 0 done, 2 the configuration
cannot work (the message says what to change), 1 any other failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from train.config import ConfigError, TrainConfig, add_config_arguments, load_config
from train.data import DataError, PackedCollator, load_shards, read_manifest
from train.plan import (
    GIB,
    PlanError,
    check_gradient_checkpointing,
    estimate_peak_bytes,
    host_memory_bytes,
    max_context,
    plan_offload,
    plan_rope,
    plan_steps,
    read_model_shape,
)

_LOG = logging.getLogger("longctx.train")


def _model_tokenizer_sha(model: str) -> str | None:
    path = Path(model).expanduser() / "tokenizer.json"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _document_lengths(data_dir: str) -> np.ndarray:
    import pyarrow as pa

    path = Path(data_dir) / "documents.arrow"
    table = pa.ipc.open_stream(path.read_bytes()).read_all()
    return np.asarray(table.column("n_tokens"), dtype=np.int64)


def build_plan(cfg: TrainConfig, dry_run: bool = False) -> dict:
    """Everything decided before loading weights; raises ConfigError/PlanError/DataError.

    With ``dry_run`` and no ``--host-memory-gib``, host RAM that falls short is a warning, not
    an error: the plan may be made on another machine than the one that will train."""
    manifest = read_manifest(cfg.data)
    seq_len = int(manifest["seq_len"])
    L = cfg.max_seq_length or seq_len
    if seq_len > L:
        raise DataError(
            f"the shards hold samples of up to {seq_len} tokens but --max-seq-length is {L}: "
            f"they would be truncated; set --max-seq-length >= {seq_len} or re-run the pipeline "
            f"with --seq-len {L}"
        )
    shape = read_model_shape(cfg.model, cfg.trust_remote_code)
    tok = manifest["tokenizer"]
    warnings = []
    if tok["vocab_size"] > shape.vocab_size:
        raise DataError(
            f"the data's tokenizer has {tok['vocab_size']} tokens but the model's embedding has "
            f"{shape.vocab_size}: ids would index past it; re-run the pipeline with "
            f"--tokenizer {cfg.model}"
        )
    model_sha = _model_tokenizer_sha(cfg.model)
    if model_sha and model_sha != tok["sha256"]:
        msg = (
            f"the data was tokenized with {tok['name']} (sha256 {tok['sha256'][:12]}), the model ships "
            f"another tokenizer.json (sha256 {model_sha[:12]}); re-run the pipeline with --tokenizer {cfg.model}"
        )
        if not cfg.allow_tokenizer_mismatch:
            raise DataError(msg + ", or pass --allow-tokenizer-mismatch true")
        warnings.append(msg)
    gc = cfg.resolved_gc()
    check_gradient_checkpointing(gc, L)
    rope = plan_rope(shape, L, cfg.rope_scaling)
    lengths = _document_lengths(cfg.data)
    if rope.factor > 1 and len(lengths):
        long_share = float(lengths[lengths > rope.native_context].sum() / max(1, lengths.sum()))
        if long_share < 0.5:
            warnings.append(
                f"only {long_share:.0%} of the tokens are in documents longer than the model's native "
                f"{rope.native_context}: RoPE scaling to {L} will learn little from this data"
            )
    tokens = L * cfg.per_device_batch_size  # one micro-step: rows are flattened, padding-free
    peak = estimate_peak_bytes(
        shape,
        tokens,
        load_in_4bit=cfg.load_in_4bit,
        lora_r=cfg.lora_r,
        modules=list(cfg.target_modules),
        gc=gc,
        tiled_mlp=cfg.tiled_mlp,
    )
    fits = max_context(
        shape,
        cfg.gpu_memory_gib,
        load_in_4bit=cfg.load_in_4bit,
        lora_r=cfg.lora_r,
        modules=list(cfg.target_modules),
        gc=gc,
        tiled_mlp=cfg.tiled_mlp,
    )
    if peak > 0.95 * cfg.gpu_memory_gib * GIB:
        raise PlanError(
            f"estimated peak {peak / GIB:.1f} GiB does not fit 95% of --gpu-memory-gib "
            f"{cfg.gpu_memory_gib}: the largest context that fits is about {fits} tokens; lower "
            "--max-seq-length (and the pipeline's --seq-len), use --load-in-4bit true, "
            "--tiled-mlp true (or --preset max-context), or a larger GPU"
        )
    host = int(cfg.host_memory_gib * GIB) if cfg.host_memory_gib > 0 else host_memory_bytes()
    try:
        offload = plan_offload(shape, tokens, gc, host, cfg.offload_pinned)
    except PlanError as err:
        if not dry_run or cfg.host_memory_gib > 0:
            raise
        warnings.append(f"on this machine: {err}")
        offload = plan_offload(shape, tokens, gc, 0, cfg.offload_pinned)
    steps = plan_steps(
        samples=int(manifest["counts"]["samples"]),
        seq_len=L,
        batch=cfg.per_device_batch_size,
        tokens_per_step=cfg.tokens_per_step,
        accum=cfg.gradient_accumulation_steps,
        epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        world_size=int(os.environ.get("WORLD_SIZE", cfg.nproc_per_node)),
    )
    return {
        "data": {
            "path": cfg.data,
            "seq_len": seq_len,
            "samples": manifest["counts"]["samples"],
            "tokens": manifest["counts"]["tokens"],
            "fill_rate": manifest["fill_rate"],
            "tokenizer": tok["name"],
        },
        "model": {"name": cfg.model, **asdict(shape), "params_b": round(shape.n_params / 1e9, 3)},
        "max_seq_length": L,
        "rope": asdict(rope),
        "gradient_checkpointing": gc,
        "memory": {
            "estimated_peak_gib": round(peak / GIB, 2),
            "gpu_memory_gib": cfg.gpu_memory_gib,
            "max_context_that_fits": fits,
            "quantization": "4-bit QLoRA" if cfg.load_in_4bit else "bf16 LoRA",
            "lora_r": cfg.lora_r,
            "tiled_mlp": cfg.tiled_mlp,
            "offload": asdict(offload) if offload else None,
        },
        "steps": asdict(steps),
        "world_size": int(os.environ.get("WORLD_SIZE", cfg.nproc_per_node)),
        "warnings": warnings,
        "config": asdict(cfg),
    }


def print_plan(plan: dict) -> None:
    m, r, mem, s = plan["model"], plan["rope"], plan["memory"], plan["steps"]
    print(
        f"data      {plan['data']['path']}: {plan['data']['samples']} samples of <= {plan['data']['seq_len']} "
        f"tokens, fill {plan['data']['fill_rate']:.3f}, tokenizer {plan['data']['tokenizer']}"
    )
    print(
        f"model     {m['name']}: {m['model_type']}, {m['params_b']}B params, hidden {m['hidden_size']}, "
        f"{m['num_hidden_layers']} layers, vocab {m['vocab_size']}, native context {r['native_context']}"
    )
    print(f"context   max_seq_length {plan['max_seq_length']}; RoPE {r['mode']}: {r['note']}")
    print(
        f"memory    {mem['quantization']} r={mem['lora_r']}, gradient checkpointing "
        f"{plan['gradient_checkpointing']!r}: ~{mem['estimated_peak_gib']} GiB peak of "
        f"{mem['gpu_memory_gib']} GiB; largest context that fits ~{mem['max_context_that_fits']}"
        f"{'; tiled MLP' if mem['tiled_mlp'] else ''}"
    )
    if mem["offload"]:
        o = mem["offload"]
        host = (
            f"host RAM {o['host_memory_bytes'] / GIB:.0f} GiB holds ~{o['max_context_host']} tokens"
            if o["host_memory_bytes"]
            else "host RAM not checked"
        )
        print(f"offload   checkpoints: {o['note']}; {host}")
    print(
        f"steps     batch {s['per_device_batch_size']} x accumulation {s['gradient_accumulation_steps']}"
        f"{' x ' + str(plan['world_size']) + ' processes' if plan['world_size'] > 1 else ''} = "
        f"{s['tokens_per_step']} tokens/step; {s['steps']} steps ({s['epochs']} epochs of {s['samples']} samples)"
    )
    for w in plan["warnings"]:
        print(f"warning   {w}")


def make_step_timer():
    """A Trainer callback that notes wall time and tokens seen at each optimizer step's end
    (transformers is imported lazily, so this module loads without it)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.marks: list[tuple[float, int]] = []

        def on_step_end(self, args, state, control, **kwargs):
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.marks.append((time.time(), int(state.num_input_tokens_seen)))

        def steady_tokens_per_s(self) -> float | None:
            """Tokens/s after the first step (compilation, autotuning, allocator warm-up)."""
            if len(self.marks) < 2:
                return None
            (t0, n0), (t1, n1) = self.marks[0], self.marks[-1]
            return round((n1 - n0) / (t1 - t0), 1) if t1 > t0 else None

    return StepTimer()


def train(cfg: TrainConfig, plan: dict, backend: str = "unsloth") -> dict:
    """Load the model (Unsloth unless backend='transformers') and train; returns the log history."""
    L = plan["max_seq_length"]
    gc = plan["gradient_checkpointing"]
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if backend == "unsloth":
        os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
        offload = plan["memory"]["offload"]
        if offload and not offload["pinned"]:
            # read by unsloth_zoo.gradient_checkpointing when its offload buffers are made
            os.environ["UNSLOTH_DISABLE_PINNED_MEMORY"] = "1"
        import unsloth  # noqa: F401  (must come before transformers)
        from unsloth import FastLanguageModel

        kw = {}
        if plan["rope"]["unsloth_rope_scaling"] is not None:
            kw["rope_scaling"] = plan["rope"]["unsloth_rope_scaling"]
        if world > 1:
            kw["device_map"] = {"": local_rank}  # one full replica per GPU (data parallel)
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=cfg.model,
            max_seq_length=L,
            load_in_4bit=cfg.load_in_4bit,
            dtype=None,
            trust_remote_code=cfg.trust_remote_code,
            unsloth_tiled_mlp=cfg.tiled_mlp,
            **kw,
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules),
            use_gradient_checkpointing=gc,
            random_state=cfg.seed,
            max_seq_length=L,
        )
        collator = PackedCollator(L, with_packed_lengths=True)
    else:
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
        if gc:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
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
        tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        collator = PackedCollator(L, with_packed_lengths=False)
    manifest = read_manifest(cfg.data)
    dataset = load_shards(cfg.data, manifest)
    import torch

    on_gpu = torch.cuda.is_available()
    common = dict(
        output_dir=cfg.output_dir,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=plan["steps"]["gradient_accumulation_steps"],
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        optim=cfg.optim if on_gpu else "adamw_torch",
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=cfg.save_steps if cfg.save_steps > 0 else 500,
        bf16=on_gpu,
        report_to="none",
        remove_unused_columns=False,  # keep seq_lengths for the collator
        dataloader_num_workers=0,
        use_cpu=not on_gpu,
        # data parallel (torchrun): every parameter that trains is used in every step
        ddp_find_unused_parameters=False if world > 1 else None,
        include_num_input_tokens_seen="all",  # rows are padding-free: every id is a token
    )
    if on_gpu:
        from trl import SFTConfig, SFTTrainer

        # The rows are already packed: no re-tokenizing, re-packing or truncation by TRL.
        args = SFTConfig(
            **common, dataset_kwargs={"skip_prepare_dataset": True}, packing=False, max_length=None
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=collator,
            processing_class=tokenizer,
        )
    else:
        # TRL 1.15's SFTTrainer always computes the loss with its fused LM head, a Triton kernel that
        # needs a GPU; on a CPU the same rows and collator go through transformers' Trainer, the class
        # SFTTrainer extends (CPU tests and smoke runs).
        from transformers import Trainer, TrainingArguments

        trainer = Trainer(
            model=model,
            args=TrainingArguments(**common),
            train_dataset=dataset,
            data_collator=collator,
        )
    timer = make_step_timer()
    trainer.add_callback(timer)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.time()
    trainer.train()
    runtime = time.time() - started
    # counted by the Trainer per optimizer micro-step and summed over processes (the collator
    # also sees the batch the data loader fetches ahead, which never trains)
    tokens = int(trainer.state.num_input_tokens_seen)
    steady = timer.steady_tokens_per_s()
    if rank != 0:  # checkpoints, logs and the summary come from rank 0 only
        return {}
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out / "adapter"))
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    summary = {
        "backend": backend,
        "max_seq_length": L,
        "steps": trainer.state.global_step,
        "world_size": world,
        "tokens": tokens,
        "runtime_s": round(runtime, 2),
        "tokens_per_s": round(tokens / runtime, 1),
        # after the first optimizer step (compilation, autotuning and allocator warm-up)
        "tokens_per_s_steady": steady,
        "peak_gib": round(torch.cuda.max_memory_allocated() / GIB, 2) if on_gpu else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2) if on_gpu else None,
        # this process's peak resident host memory (offloaded checkpoints live here)
        "host_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "tiled_mlp": cfg.tiled_mlp,
        "offload_pinned": (plan["memory"]["offload"] or {}).get("pinned"),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
    }
    (out / "log_history.json").write_text(json.dumps(history, indent=1))
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    print("summary", json.dumps(summary))
    return summary


def _relaunch_with_torchrun(nproc: int, argv: list[str]) -> int:
    """Start ``nproc`` copies of this command, one per GPU, with torchrun (standalone rendezvous
    on this machine); each gets RANK / LOCAL_RANK / WORLD_SIZE. Exit status: torchrun's."""
    import subprocess

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "train.launch",
        *argv,
    ]
    print("starting:", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.launch", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", help="YAML file of options (flags win)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan and stop (no GPU needed)"
    )
    parser.add_argument(
        "--backend",
        choices=("unsloth", "transformers"),
        default="unsloth",
        help="unsloth (default), or plain transformers + PEFT (CPU tests, comparisons)",
    )
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "dry_run", "backend")}
    try:
        cfg = load_config(args.config, overrides)
        plan = build_plan(cfg, dry_run=args.dry_run)
    except (ConfigError, PlanError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if cfg.nproc_per_node > 1 and "LOCAL_RANK" not in os.environ and not args.dry_run:
        return _relaunch_with_torchrun(cfg.nproc_per_node, sys.argv[1:] if argv is None else argv)
    if int(os.environ.get("RANK", "0")) == 0:
        print_plan(plan)
    if args.dry_run:
        return 0
    if not cfg.skip_validation:
        from schemas.validation import validate_output

        problems = validate_output(cfg.data)
        if problems.total:
            print(
                f"error: --data {cfg.data} fails validation ({problems.total} problems), first: "
                + "; ".join(problems[:3]),
                file=sys.stderr,
            )
            return 2
    try:
        train(cfg, plan, backend=args.backend)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
