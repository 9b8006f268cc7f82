"""Train on a finished pipeline output with Unsloth at long context.

    python -m train.launch --data out --model unsloth/Llama-3.2-1B --dry-run
    python -m train.launch --config configs/llama-3.2-1b-64k.yaml --max-steps 50

Before any weights load it reads the manifest, re-checks the output folder's invariants, reads
the model's config.json, plans RoPE scaling, memory and steps, and refuses what cannot work
(shards longer than --max-seq-length, a tokenizer that does not match the model, a plan that does
not fit --gpu-memory-gib, checkpointing other than "unsloth" above 32K, an --eval-data folder with
no validation split). ``--dry-run`` prints the plan and stops; it needs neither a GPU nor Unsloth.
With ``--eval-data`` the validation loss is logged every ``--eval-steps`` and after the last
step; ``--resume-from-checkpoint last|PATH`` continues a stopped run from its checkpoint (written
every ``--save-steps``). ``--nproc-per-node N`` trains data parallel on N GPUs;
``--context-parallel N`` splits each row's tokens over N GPUs instead (``train/context_parallel.py``:
plain transformers + PEFT, per-document attention kept). Exit status: 0 done, 2 the
configuration cannot work (the message says what to change), 1 any other failure.

The recipe, one module per concern: ``train/preflight.py`` (checks and the plan),
``train/model.py`` (load, RoPE, LoRA), ``train/trainer.py`` (TRL/transformers Trainer, timer,
summary), ``train/data.py`` (shards and the packed collator); this module is the CLI.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from train.config import ConfigError, TrainConfig, add_config_arguments, load_config
from train.data import DataError, PackedCollator, load_shards, read_manifest
from train.model import load_model
from train.plan import PlanError
from train.preflight import build_plan, print_plan
from train.trainer import (
    evaluate_after_training,
    make_step_timer,
    make_trainer,
    run_settings,
    summarize,
    training_arguments,
    write_run_outputs,
    write_run_settings,
)

_LOG = logging.getLogger("longctx.train")
CP_BACKEND_NOTE = (
    "backend   transformers + PEFT: --context-parallel replaces the attention function "
    "(transformers' AttentionInterface), which Unsloth's patched attention does not call"
)


def _eval_dataset(plan: dict):
    """The validation split that ``--eval-data`` names (checked by the plan), or None."""
    if not plan["eval"]:
        return None
    path = plan["eval"]["path"]
    return load_shards(path, read_manifest(path, "--eval-data"), split="validation")


def train(cfg: TrainConfig, plan: dict, backend: str = "unsloth") -> dict:
    """Load the model (Unsloth unless backend='transformers') and train; returns the summary
    (empty on ranks other than 0, which write nothing). With ``--context-parallel N`` the N
    processes join one group first (``train/context_parallel.py``) and split every row."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cp = (plan["context_parallel"] or {}).get("size", 1)
    if cp > 1:
        from train import context_parallel

        context_parallel.init_group(cp)  # hides torchrun's variables from transformers
    model, tokenizer = load_model(cfg, plan, backend)  # first: unsloth must precede transformers
    import torch

    on_gpu = torch.cuda.is_available()
    collator = PackedCollator(
        plan["max_seq_length"],
        with_packed_lengths=backend == "unsloth",
        attention=plan["attention"],
    )
    trainer_inputs = dict(
        model=model,
        tokenizer=tokenizer,
        collator=collator,
        train_dataset=load_shards(cfg.data, read_manifest(cfg.data)),
        eval_dataset=_eval_dataset(plan),
    )
    if cp > 1:
        trainer = context_parallel.make_trainer(
            training_arguments(cfg, plan, on_gpu=on_gpu, world_size=1), **trainer_inputs
        )
    else:
        trainer = make_trainer(
            training_arguments(cfg, plan, on_gpu=on_gpu, world_size=world),
            **trainer_inputs,
            on_gpu=on_gpu,
        )
    timer = make_step_timer()
    trainer.add_callback(timer)
    kept = (plan["memory"]["offload"] or {}).get("gpu_layers", 0)
    if kept and cp == 1:  # the context-parallel trainer does not re-arm the layers
        from train.context_parallel import make_checkpoint_keeper

        trainer.add_callback(make_checkpoint_keeper(kept))
    settings = run_settings(cfg, plan)
    if rank == 0:
        write_run_settings(cfg.output_dir, settings)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.time()
    trainer.train(resume_from_checkpoint=(plan["resume"] or {}).get("path"))
    runtime = time.time() - started
    eval_s = timer.eval_seconds()  # inside trainer.train(), before the final evaluation
    evaluate_after_training(trainer, plan)
    if cp > 1:
        context_parallel.close_group()  # the last collective is behind
    if rank != 0:  # checkpoints, logs and the summary: rank 0 only
        return {}
    summary = summarize(
        cfg,
        plan,
        trainer,
        backend=backend,
        world_size=world,
        runtime=runtime,
        eval_s=eval_s,
        timer=timer,
    )
    write_run_outputs(
        cfg.output_dir, model, tokenizer, settings, trainer.state.log_history, summary
    )
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="python -m train.launch", description=__doc__.split("\n")[0]
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
    return parser


def _validation_problem(cfg: TrainConfig) -> str | None:
    """The invariants (schemas/validation.py) of ``--data`` and of an ``--eval-data`` folder
    other than it: None, or the error to print."""
    from schemas.validation import validate_output

    folders = [("--data", cfg.data)]
    if cfg.eval_data and Path(cfg.eval_data).resolve() != Path(cfg.data).resolve():
        folders.append(("--eval-data", cfg.eval_data))
    for flag, folder in folders:
        problems = validate_output(folder)
        if problems.total:
            return (
                f"{flag} {folder} fails validation ({problems.total} problems), first: "
                + "; ".join(problems[:3])
            )
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "dry_run", "backend")}
    try:
        cfg = load_config(args.config, overrides)
        plan = build_plan(cfg, dry_run=args.dry_run)
    except (ConfigError, PlanError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    backend = args.backend
    cp = cfg.context_parallel
    nproc = max(cfg.nproc_per_node, cp)
    if nproc > 1 and "LOCAL_RANK" not in os.environ and not args.dry_run:
        return _relaunch_with_torchrun(nproc, sys.argv[1:] if argv is None else argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cp > 1 and "LOCAL_RANK" in os.environ and world != cp:
        print(
            f"error: --context-parallel {cp} needs exactly {cp} processes, got WORLD_SIZE "
            f"{world}; data parallel beside context parallel is not supported",
            file=sys.stderr,
        )
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print_plan(plan)
        if cp > 1 and backend == "unsloth":
            print(CP_BACKEND_NOTE)
    if cp > 1:
        backend = "transformers"
    if args.dry_run:
        return 0
    problem = None if cfg.skip_validation else _validation_problem(cfg)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        train(cfg, plan, backend=backend)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def cli() -> int:
    """The ``longctx-train`` command (the same as ``python -m train.launch``)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return main()


if __name__ == "__main__":
    sys.exit(cli())
