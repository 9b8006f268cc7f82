"""The Trainer around the model: TRL SFTTrainer on a GPU, transformers' Trainer on a CPU.

The rows are already packed, so TRL is told not to re-tokenize, re-pack or truncate them
(``skip_prepare_dataset``, ``packing=False``, ``max_length=None``) and the collator
(``train/data.py``) turns each micro-batch into one padding-free row. A step timer measures
tokens/s after the first optimizer step, and :func:`summarize` gathers what
``train_summary.json`` reports. transformers and TRL are imported inside the functions.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

from train.config import TrainConfig
from train.plan import GIB


def training_arguments(cfg: TrainConfig, plan: dict, *, on_gpu: bool, world_size: int) -> dict:
    """Keyword arguments shared by ``SFTConfig`` and ``TrainingArguments``. Steps, accumulation
    and warmup are the plan's (clamped where the flags asked for more than the data holds): the
    Trainer runs exactly the planned steps, so its epoch (``state.epoch``) ends at the planned
    fraction."""
    steps = plan["steps"]
    return dict(
        output_dir=cfg.output_dir,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=steps["gradient_accumulation_steps"],
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=steps["warmup_steps"],
        weight_decay=cfg.weight_decay,
        optim=cfg.optim if on_gpu else "adamw_torch",
        num_train_epochs=steps["epochs"],  # for the record: max_steps decides
        max_steps=steps["steps"],
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
        ddp_find_unused_parameters=False if world_size > 1 else None,
        include_num_input_tokens_seen="all",  # rows are padding-free: every id is a token
        **eval_arguments(cfg, plan),
    )


def eval_arguments(cfg: TrainConfig, plan: dict) -> dict:
    """With ``--eval-data``: the validation loss every ``--eval-steps`` steps (0: none during
    training; :func:`evaluate_after_training` adds the last). Only the loss is kept: the logits
    of one 64K-token row with a 150K vocabulary would take 39 GB in fp32."""
    if not plan["eval"]:
        return {}
    every = plan["eval"]["eval_steps"]
    return dict(
        per_device_eval_batch_size=cfg.per_device_batch_size,
        prediction_loss_only=True,
        eval_strategy="steps" if every else "no",
        **({"eval_steps": every} if every else {}),
    )


def evaluate_after_training(trainer, plan: dict) -> None:
    """One more validation pass unless the last step was just evaluated, so that the summary's
    ``eval_loss`` is the final model's (every process calls it: evaluation is collective)."""
    if not plan["eval"]:
        return
    done = [h for h in trainer.state.log_history if "eval_loss" in h]
    if not done or done[-1].get("step") != trainer.state.global_step:
        trainer.evaluate()


def make_trainer(
    args: dict, *, model, tokenizer, collator, train_dataset, eval_dataset=None, on_gpu: bool
):
    """SFTTrainer on a GPU; on a CPU transformers' Trainer, the class SFTTrainer extends (TRL
    1.15's SFTTrainer always computes the loss with its fused LM head, a Triton kernel that
    needs a GPU), with the same rows and collator (CPU tests and smoke runs). Both save the
    tokenizer (eos/pad = the data's document end, ``train.model.use_document_end``) with every
    checkpoint."""
    if on_gpu:
        from trl import SFTConfig, SFTTrainer

        # The rows are already packed: no re-tokenizing, re-packing or truncation by TRL; its
        # eos is the data's document end, so TRL appends and pads with no other token.
        sft_args = SFTConfig(
            **args,
            dataset_kwargs={"skip_prepare_dataset": True},
            packing=False,
            max_length=None,
            eos_token=tokenizer.eos_token,
        )
        return SFTTrainer(
            model=model,
            args=sft_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=collator,
            processing_class=tokenizer,
        )
    from transformers import Trainer, TrainingArguments

    return Trainer(
        model=model,
        args=TrainingArguments(**args),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
    )


def make_step_timer():
    """A Trainer callback that notes wall time and tokens seen at each optimizer step's end,
    and the time validation passes take (transformers is imported lazily, so this module
    loads without it)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.marks: list[tuple[float, int]] = []
            self.evals: list[tuple[int, float]] = []  # (marks before it, seconds)
            self.start_tokens = 0  # tokens seen before this session (a resumed run's)

        def on_train_begin(self, args, state, control, **kwargs):
            self.start_tokens = int(state.num_input_tokens_seen)

        def on_step_end(self, args, state, control, **kwargs):
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.marks.append((time.time(), int(state.num_input_tokens_seen)))

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.evals.append((len(self.marks), float((metrics or {}).get("eval_runtime", 0.0))))

        def eval_seconds(self) -> float:
            """Seconds of validation so far."""
            return sum(s for _, s in self.evals)

        def steady_tokens_per_s(self) -> float | None:
            """Tokens/s after the first step (compilation, autotuning, allocator warm-up),
            not counting validation passes between the first and the last step."""
            if len(self.marks) < 2:
                return None
            (t0, n0), (t1, n1) = self.marks[0], self.marks[-1]
            paused = sum(s for k, s in self.evals if 1 <= k < len(self.marks))
            return round((n1 - n0) / (t1 - t0 - paused), 1) if t1 - t0 > paused else None

    return StepTimer()


def summarize(
    cfg: TrainConfig,
    plan: dict,
    trainer,
    *,
    backend: str,
    world_size: int,
    runtime: float,
    eval_s: float,
    timer,
) -> dict:
    """What ``train_summary.json`` holds: size, speed, memory and losses of the run.

    ``runtime`` is the wall time of ``trainer.train()``, ``eval_s`` the validation passes
    inside it; tokens/s counts this session's training time and tokens only (a resumed run's
    ``tokens`` and losses include the steps before it). ``eval_runtime_s`` is every validation
    pass's time, the final one after ``trainer.train()`` included (``timer`` counts them all)."""
    import torch

    from train.context_parallel import RESIDENT_CALLS

    on_gpu = torch.cuda.is_available()
    # counted by the Trainer per optimizer micro-step and summed over processes (the collator
    # also sees the batch the data loader fetches ahead, which never trains)
    tokens = int(trainer.state.num_input_tokens_seen)
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    evals = [{"step": h["step"], "loss": h["eval_loss"]} for h in history if "eval_loss" in h]
    resume = plan["resume"] or {}
    return {
        "backend": backend,
        "max_seq_length": plan["max_seq_length"],
        "attention": plan["attention"],
        "rope": {k: plan["rope"][k] for k in ("mode", "method", "factor", "source")},
        "document_end_id": (plan["document_end"] or {}).get("id"),
        "steps": trainer.state.global_step,
        # the Trainer's epoch at the end, and the plan's (equal: the plan follows its rules)
        "epochs": round(float(trainer.state.epoch or 0.0), 4),
        "planned_epochs": plan["steps"]["epochs"],
        "gradient_accumulation_steps": plan["steps"]["gradient_accumulation_steps"],
        "warmup_steps": plan["steps"]["warmup_steps"],
        "resumed_from": resume.get("path"),
        "resumed_at_step": resume.get("step"),
        "world_size": world_size,
        "context_parallel": (plan.get("context_parallel") or {}).get("size", 1),
        "tokens": tokens,
        "runtime_s": round(runtime, 2),
        "eval_runtime_s": round(timer.eval_seconds(), 2),
        "tokens_per_s": round((tokens - timer.start_tokens) / (runtime - eval_s), 1),
        # after the first optimizer step (compilation, autotuning and allocator warm-up)
        "tokens_per_s_steady": timer.steady_tokens_per_s(),
        "peak_gib": round(torch.cuda.max_memory_allocated() / GIB, 2) if on_gpu else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2) if on_gpu else None,
        # this process's peak resident host memory (offloaded checkpoints live here)
        "host_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "tiled_mlp": cfg.tiled_mlp,
        "offload_pinned": (plan["memory"]["offload"] or {}).get("pinned"),
        # the plan's figures, beside the measured ones: its GPU estimate (per GPU) and the
        # layers whose checkpoints stayed on the GPU because the host could not hold them
        "estimated_peak_gib": plan["memory"]["estimated_peak_gib"],
        "checkpoint_layers_on_gpu": (plan["memory"]["offload"] or {}).get("gpu_layers", 0),
        # how many layer forwards kept their checkpoint on the GPU (kept layers x micro-steps)
        "resident_checkpoint_calls": RESIDENT_CALLS[0],
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "eval_data": (plan["eval"] or {}).get("path"),
        # validation loss at each evaluation; the last is the final model's
        "eval_losses": evals,
        "eval_loss": evals[-1]["loss"] if evals else None,
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
    }


RUN_SETTINGS = "longctx_training.json"


def run_settings(cfg: TrainConfig, plan: dict) -> dict:
    """What ``train.export`` needs besides the adapter: the base model, the context, the RoPE
    plan (``rope.config`` goes into the merged model's config.json) and the document end."""
    return {
        "base_model": cfg.model,
        "max_seq_length": plan["max_seq_length"],
        "rope": plan["rope"],
        "document_end": plan["document_end"],
        "attention": plan["attention"],
    }


def write_run_settings(output_dir: str, settings: dict) -> None:
    """``OUTPUT_DIR/longctx_training.json``, before training: an export from a checkpoint-N
    folder finds it one level up."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_SETTINGS).write_text(json.dumps(settings, indent=1))


def write_run_outputs(
    output_dir: str, model, tokenizer, settings: dict, log_history: list, summary: dict
) -> None:
    """``OUTPUT_DIR/adapter/`` (the LoRA weights, the tokenizer with the data's document end as
    eos/pad, and ``longctx_training.json``), ``log_history.json`` and ``train_summary.json``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out / "adapter"))
    tokenizer.save_pretrained(str(out / "adapter"))
    (out / "adapter" / RUN_SETTINGS).write_text(json.dumps(settings, indent=1))
    (out / "log_history.json").write_text(json.dumps(log_history, indent=1))
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1))
