"""Everything decided before any weights load: data checks, the plan, and its printout.

``build_plan`` reads the manifest and the model's ``config.json`` (no torch, no GPU) and raises
``DataError`` / ``PlanError`` / ``ConfigError`` for what cannot work, each message saying what to
change: shards longer than ``--max-seq-length``, a tokenizer that does not match the model, a
plan that does not fit ``--gpu-memory-gib`` (or the host's RAM, for offloaded checkpoints),
checkpointing other than "unsloth" above 32K, an ``--eval-data`` folder without a validation
split or prepared with another tokenizer, a ``--resume-from-checkpoint`` with no checkpoint. It
also decides the document-end token training uses as eos/pad (the data's, :func:`document_end`)
and warns about what it clamps (warmup, accumulation: ``train/plan.py:plan_steps``).
``print_plan`` is what ``--dry-run`` shows."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np

from schemas.layout import DOCUMENTS
from train.config import ConfigError, TrainConfig
from train.data import CONTEXT, DataError, read_manifest, split_shards
from train.plan import (
    GIB,
    ModelShape,
    PlanError,
    RopePlan,
    check_context_parallel,
    check_gradient_checkpointing,
    estimate_cp_peak_bytes,
    estimate_peak_bytes,
    host_memory_bytes,
    longest_cp_context,
    max_context,
    max_cp_context,
    plan_offload,
    plan_rope,
    plan_steps,
    read_model_shape,
)

HOW_TO_SPLIT = (
    "re-run the pipeline with --eval-fraction F (for example --eval-fraction 0.05) to hold out "
    "whole documents as shards/validation-*"
)
ATTENTION_NOTES = {
    "per-document": "positions restart at every document, no attention across documents",
    "stream": "for ablations: each row is one causal stream, documents attend to earlier ones",
}


def model_tokenizer_sha(model: str) -> str | None:
    """sha256 of the model folder's ``tokenizer.json`` (None for a Hub id or no file)."""
    path = Path(model).expanduser() / "tokenizer.json"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def document_lengths(data_dir: str) -> np.ndarray:
    """``n_tokens`` of every document in ``documents.arrow`` (int64)."""
    import pyarrow as pa

    path = Path(data_dir) / DOCUMENTS
    table = pa.ipc.open_stream(path.read_bytes()).read_all()
    return np.asarray(table.column("n_tokens"), dtype=np.int64)


def check_sample_length(seq_len: int, max_seq_length: int) -> None:
    """Samples of the data must fit the context: nothing is ever truncated."""
    if seq_len > max_seq_length:
        raise DataError(
            f"the shards hold samples of up to {seq_len} tokens but --max-seq-length is "
            f"{max_seq_length}: they would be truncated; set --max-seq-length >= {seq_len} or "
            f"re-run the pipeline with --seq-len {max_seq_length}"
        )


def check_tokenizer(cfg: TrainConfig, shape: ModelShape, tok: dict) -> list[str]:
    """The data's ids must index the model's embedding, and its tokenizer should be the
    model's; a differing ``tokenizer.json`` is an error unless ``--allow-tokenizer-mismatch``
    (then a warning, returned)."""
    if tok["vocab_size"] > shape.vocab_size:
        raise DataError(
            f"the data's tokenizer has {tok['vocab_size']} tokens but the model's embedding has "
            f"{shape.vocab_size}: ids would index past it; re-run the pipeline with "
            f"--tokenizer {cfg.model}"
        )
    model_sha = model_tokenizer_sha(cfg.model)
    if not model_sha or model_sha == tok["sha256"]:
        return []
    msg = (
        f"the data was tokenized with {tok['name']} (sha256 {tok['sha256'][:12]}), the model ships "
        f"another tokenizer.json (sha256 {model_sha[:12]}); re-run the pipeline with --tokenizer {cfg.model}"
    )
    if not cfg.allow_tokenizer_mismatch:
        raise DataError(msg + ", or pass --allow-tokenizer-mismatch true")
    return [msg]


def plan_eval(cfg: TrainConfig, max_seq_length: int, train_manifest: dict) -> dict | None:
    """The validation split that ``--eval-data`` names (None without it), checked before any
    weights load: it must exist, fit ``max_seq_length`` and share the training data's tokenizer.
    Its shards are the manifest entries of split "validation" (by name ``validation-*`` in a
    manifest without split fields); ``--eval-data`` may be the ``--data`` folder itself."""
    if not cfg.eval_data:
        return None
    root = Path(cfg.eval_data)
    same = root.resolve() == Path(cfg.data).resolve()
    manifest = train_manifest if same else read_manifest(cfg.eval_data, "--eval-data")
    shards = split_shards(manifest, "validation")
    if not shards:
        raise DataError(
            f"--eval-data {cfg.eval_data}: the output has no validation split (no "
            f"shards/validation-* in its manifest.json); {HOW_TO_SPLIT}"
        )
    missing = [s["path"] for s in shards if not (root / s["path"]).is_file()]
    if missing:
        raise DataError(f"--eval-data {cfg.eval_data}: {missing[0]} is listed but missing")
    if int(manifest["seq_len"]) > max_seq_length:
        raise DataError(
            f"--eval-data {cfg.eval_data} holds samples of up to {manifest['seq_len']} tokens but "
            f"--max-seq-length is {max_seq_length}: they would be truncated; prepare it with "
            f"the pipeline's --seq-len {max_seq_length} or raise --max-seq-length"
        )
    tok, train_tok = manifest["tokenizer"], train_manifest["tokenizer"]
    if tok["sha256"] != train_tok["sha256"]:
        raise DataError(
            f"--eval-data {cfg.eval_data} was tokenized with {tok['name']} (sha256 "
            f"{tok['sha256'][:12]}), --data with {train_tok['name']} (sha256 "
            f"{train_tok['sha256'][:12]}); prepare both with the same --tokenizer"
        )
    return {
        "path": cfg.eval_data,
        "samples": sum(int(s["rows"]) for s in shards),
        "tokens": sum(int(s["tokens"]) for s in shards),
        "eval_steps": cfg.eval_steps,
    }


def long_document_warning(rope: RopePlan, lengths: np.ndarray, target: int) -> str | None:
    """RoPE scaling learns little when most tokens sit in documents within the native window."""
    if rope.factor <= 1 or not len(lengths):
        return None
    long_share = float(lengths[lengths > rope.native_context].sum() / max(1, lengths.sum()))
    if long_share >= 0.5:
        return None
    return (
        f"only {long_share:.0%} of the tokens are in documents longer than the model's native "
        f"{rope.native_context}: RoPE scaling to {target} will learn little from this data"
    )


def plan_memory(
    cfg: TrainConfig,
    shape: ModelShape,
    tokens: int,
    gc: str | bool,
    *,
    dry_run: bool,
    warnings: list[str],
) -> dict:
    """GPU peak for one micro-step of ``tokens`` and host RAM for offloaded checkpoints.

    Raises PlanError when the peak passes 95% of ``--gpu-memory-gib``, or the checkpoints do not
    fit the host; a dry run without ``--host-memory-gib`` only warns about the host (appended to
    ``warnings``): the plan may be made on another machine than the one that will train."""
    sizes = dict(
        load_in_4bit=cfg.load_in_4bit,
        lora_r=cfg.lora_r,
        modules=list(cfg.target_modules),
        gc=gc,
        tiled_mlp=cfg.tiled_mlp,
    )
    peak = estimate_peak_bytes(shape, tokens, **sizes)
    fits = max_context(shape, cfg.gpu_memory_gib, **sizes)
    if peak > 0.95 * cfg.gpu_memory_gib * GIB:
        raise PlanError(
            f"estimated peak {peak / GIB:.1f} GiB does not fit 95% of --gpu-memory-gib "
            f"{cfg.gpu_memory_gib}: the largest context that fits is about {fits} tokens; lower "
            "--max-seq-length (and the pipeline's --seq-len), use --load-in-4bit true, "
            "--tiled-mlp true (or --preset max-context), or a larger GPU"
        )
    offload = _plan_host(cfg, shape, tokens, gc, peak, cfg.offload_pinned, 1, dry_run, warnings)
    if offload:
        peak += offload.gpu_bytes
    return {
        "estimated_peak_gib": round(peak / GIB, 2),
        "gpu_memory_gib": cfg.gpu_memory_gib,
        "max_context_that_fits": fits,
        "quantization": "4-bit QLoRA" if cfg.load_in_4bit else "bf16 LoRA",
        "lora_r": cfg.lora_r,
        "tiled_mlp": cfg.tiled_mlp,
        "offload": asdict(offload) if offload else None,
    }


def _plan_host(
    cfg: TrainConfig,
    shape: ModelShape,
    tokens: int,
    gc: str | bool,
    peak: int,
    pinned: str,
    ranks: int,
    dry_run: bool,
    warnings: list[str],
):
    """Offloaded checkpoints against the host's RAM (``--host-memory-gib``, else what
    :func:`host_memory_bytes` reads), with the GPU's room beside ``peak`` for the layers the host
    cannot hold. A dry run without ``--host-memory-gib`` plans as if the host held them all (the
    plan may be made on another machine than the one that will train) and warns when this
    machine's RAM would not."""
    # data-parallel processes on this host (torchrun's LOCAL_WORLD_SIZE: WORLD_SIZE counts the
    # processes of every node, each node offloading to its own RAM)
    local = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE")
    processes = 1 if ranks > 1 else int(local or cfg.nproc_per_node)
    gpu_room = int(0.95 * cfg.gpu_memory_gib * GIB) - peak
    if dry_run and cfg.host_memory_gib <= 0:
        try:
            here = plan_offload(
                shape, tokens, gc, host_memory_bytes(), pinned, gpu_room, ranks, processes
            )
            if here and here.gpu_layers:
                warnings.append(
                    f"on this machine: host RAM {here.host_memory_bytes / GIB:.0f} GiB would "
                    f"keep the first {here.gpu_layers} layers' checkpoints on the GPU "
                    f"(+{here.gpu_bytes / GIB:.1f} GiB); set --host-memory-gib for the machine "
                    "that will train"
                )
        except PlanError as err:
            warnings.append(f"on this machine: {err}")
        return plan_offload(shape, tokens, gc, 0, pinned, ranks=ranks, processes=processes)
    host = int(cfg.host_memory_gib * GIB) if cfg.host_memory_gib > 0 else host_memory_bytes()
    return plan_offload(shape, tokens, gc, host, pinned, gpu_room, ranks, processes)


def plan_context_parallel(
    cfg: TrainConfig,
    shape: ModelShape,
    tokens: int,
    gc: str | bool,
    *,
    dry_run: bool,
    warnings: list[str],
) -> tuple[dict, dict]:
    """``--context-parallel N`` > 1: the split (tokens, heads and KV heads per GPU) and the
    memory per GPU (``train/plan.py``: tokens/N of the per-token cost plus the attention's
    full-sequence working set for heads/N); raises PlanError for heads that do not divide by N,
    a peak that does not fit 95% of ``--gpu-memory-gib``, or offloaded checkpoints (the whole
    row's: the N processes share the host) that do not fit the host (a dry run only warns,
    as :func:`plan_memory`)."""
    cp = cfg.context_parallel
    check_context_parallel(shape, cp, cfg.model)
    sizes = dict(
        lora_r=cfg.lora_r, modules=list(cfg.target_modules), gc=gc, tiled_mlp=cfg.tiled_mlp
    )
    peak = estimate_cp_peak_bytes(shape, tokens, cp, **sizes)
    fits = max_cp_context(shape, cfg.gpu_memory_gib, cp, **sizes)
    one = max_cp_context(shape, cfg.gpu_memory_gib, 1, **sizes)
    if peak > 0.95 * cfg.gpu_memory_gib * GIB:
        raise PlanError(
            f"estimated peak {peak / GIB:.1f} GiB per GPU with --context-parallel {cp} does not "
            f"fit 95% of --gpu-memory-gib {cfg.gpu_memory_gib}: the largest context that fits "
            f"over {cp} GPUs is about {fits} tokens; lower --max-seq-length (and the pipeline's "
            "--seq-len) or raise --context-parallel"
        )
    # this path's own offload copies to pageable memory
    offload = _plan_host(cfg, shape, tokens, gc, peak, "false", cp, dry_run, warnings)
    if offload:
        peak += offload.gpu_bytes
    # the longest with the host RAM the offload plan above sized by (0 in a dry run without
    # --host-memory-gib: as if the host held every checkpoint)
    longest = (
        longest_cp_context(shape, cfg.gpu_memory_gib, cp, offload.host_memory_bytes, **sizes)
        if offload
        else fits
    )
    split = {
        "size": cp,
        "tokens_per_gpu": -(-tokens // cp),
        "heads_per_gpu": shape.num_attention_heads // cp,
        "kv_heads_per_gpu": shape.num_key_value_heads // cp,
        "backend": "transformers",
    }
    memory = {
        "estimated_peak_gib": round(peak / GIB, 2),
        "gpu_memory_gib": cfg.gpu_memory_gib,
        "max_context_that_fits": longest,
        "max_context_gpu_memory": fits,
        "max_context_one_gpu": one,
        "quantization": "bf16 LoRA",
        "lora_r": cfg.lora_r,
        "tiled_mlp": cfg.tiled_mlp,
        "offload": asdict(offload) if offload else None,
        "per_gpu_of": cp,
    }
    return split, memory


def _model_eos(model: str) -> str | None:
    """The eos token named by the model folder's ``tokenizer_config.json`` (None: no file)."""
    path = Path(model).expanduser() / "tokenizer_config.json"
    if not path.is_file():
        return None
    eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token")
    return eos.get("content") if isinstance(eos, dict) else eos


def document_end(manifest: dict, model: str) -> dict | None:
    """The token that ends every document of the data: the manifest's end-of-text (what the
    pipeline appended). Training makes it the tokenizer's eos and pad and the model's
    eos_token_id, so TRL/Unsloth never append or pad with another token (Qwen3's tokenizer says
    eos ``<|im_end|>``, its documents end with ``<|endoftext|>``). None for a manifest that does
    not record it (the tokenizer's own eos stays)."""
    tok = manifest["tokenizer"]
    if tok.get("end_of_text_id") is None or not tok.get("end_of_text"):
        return None
    return {
        "token": tok["end_of_text"],
        "id": int(tok["end_of_text_id"]),
        "model_eos": _model_eos(model),
    }


def last_checkpoint(output_dir: str) -> Path | None:
    """The ``checkpoint-N`` folder of ``output_dir`` with the largest N that holds a
    ``trainer_state.json`` (transformers' rule), or None."""
    root = Path(output_dir)
    found = [
        (int(m.group(1)), p)
        for p in (root.iterdir() if root.is_dir() else [])
        if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and (p / "trainer_state.json").is_file()
    ]
    return max(found)[1] if found else None


def plan_resume(cfg: TrainConfig, steps: int, warnings: list[str]) -> dict | None:
    """``--resume-from-checkpoint last|PATH``: the checkpoint to continue from and its step,
    checked before any weights load; a checkpoint already at the planned steps is a warning."""
    value = cfg.resume_from_checkpoint
    if not value:
        return None
    if value == "last":
        path = last_checkpoint(cfg.output_dir)
        if path is None:
            raise ConfigError(
                f"--resume-from-checkpoint last: no checkpoint-N folder with trainer_state.json in "
                f"--output-dir {cfg.output_dir}; checkpoints are written every --save-steps N"
            )
    else:
        path = Path(value)
        if not (path / "trainer_state.json").is_file():
            raise ConfigError(
                f"--resume-from-checkpoint {value}: no trainer_state.json there (expected a "
                "checkpoint-N folder of a run, or 'last')"
            )
    step = int(json.loads((path / "trainer_state.json").read_text())["global_step"])
    if step >= steps:
        warnings.append(f"{path} is at step {step}: the planned {steps} steps are done already")
    return {"path": str(path), "step": step}


def _plan_steps(cfg: TrainConfig, samples: int, L: int, world_size: int) -> dict:
    steps = plan_steps(
        samples=samples,
        seq_len=L,
        batch=cfg.per_device_batch_size,
        tokens_per_step=cfg.tokens_per_step,
        accum=cfg.gradient_accumulation_steps,
        epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        world_size=world_size,
        warmup_steps=cfg.warmup_steps,
    )
    return asdict(steps)


def overlap_warning(data_dir: str, manifest: dict, shards: list[dict]) -> str | None:
    """An output made with ``--overlap K`` whose shards lack ``context_tokens`` (made before the
    column existed): the K repeated tokens of every later window would be learned twice."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    overlap = int(manifest.get("overlap") or 0)
    if not overlap or not shards:
        return None
    path = Path(data_dir) / shards[0]["path"]
    if path.suffix == ".parquet":
        names = pq.read_schema(path).names
    else:
        with pa.memory_map(str(path)) as source:
            names = pa.ipc.open_stream(source).schema.names
    if CONTEXT in names:
        return None
    return (
        f"the data was made with --overlap {overlap} but its shards have no {CONTEXT} column: "
        f"the {overlap} tokens each window repeats will be learned twice; re-run the pipeline"
    )


def build_plan(cfg: TrainConfig, dry_run: bool = False) -> dict:
    """Everything decided before loading weights; raises ConfigError/PlanError/DataError.

    With ``dry_run`` and no ``--host-memory-gib``, host RAM that falls short is a warning, not
    an error: the plan may be made on another machine than the one that will train."""
    manifest = read_manifest(cfg.data)
    seq_len = int(manifest["seq_len"])
    L = cfg.max_seq_length or seq_len
    check_sample_length(seq_len, L)
    evaluation = plan_eval(cfg, L, manifest)
    train_shards = split_shards(manifest, "train")  # validation shards never train
    samples = sum(int(s["rows"]) for s in train_shards)
    shape = read_model_shape(cfg.model, cfg.trust_remote_code)
    tok = manifest["tokenizer"]
    warnings = check_tokenizer(cfg, shape, tok)
    gc = cfg.resolved_gc()
    check_gradient_checkpointing(gc, L)
    rope = plan_rope(shape, L, cfg.rope_scaling)
    long_docs = long_document_warning(rope, document_lengths(cfg.data), L)
    overlap = overlap_warning(cfg.data, manifest, train_shards)
    warnings += [w for w in (long_docs, overlap) if w]
    tokens = L * cfg.per_device_batch_size  # one micro-step: rows are flattened, padding-free
    if cfg.context_parallel > 1:
        # the N processes split each row: one data-parallel replica
        context_parallel, memory = plan_context_parallel(
            cfg, shape, tokens, gc, dry_run=dry_run, warnings=warnings
        )
        world_size = 1
    else:
        context_parallel = None
        memory = plan_memory(cfg, shape, tokens, gc, dry_run=dry_run, warnings=warnings)
        world_size = int(os.environ.get("WORLD_SIZE", cfg.nproc_per_node))
    steps = _plan_steps(cfg, samples, L, world_size)
    warnings += steps["warnings"]
    resume = plan_resume(cfg, steps["steps"], warnings)
    return {
        "data": {
            "path": cfg.data,
            "seq_len": seq_len,
            "samples": samples,
            "tokens": sum(int(s["tokens"]) for s in train_shards),
            "fill_rate": manifest["fill_rate"],
            "tokenizer": tok["name"],
            "overlap": int(manifest.get("overlap") or 0),
        },
        "model": {"name": cfg.model, **asdict(shape), "params_b": round(shape.n_params / 1e9, 3)},
        "max_seq_length": L,
        "attention": cfg.attention,
        "rope": asdict(rope),
        "gradient_checkpointing": gc,
        "memory": memory,
        "steps": steps,
        "document_end": document_end(manifest, cfg.model),
        "resume": resume,
        "eval": evaluation,
        "world_size": world_size,  # data-parallel processes
        "context_parallel": context_parallel,
        "warnings": warnings,
        "config": asdict(cfg),
    }


def _steps_line(plan: dict) -> str:
    s = plan["steps"]
    processes = f" x {plan['world_size']} processes" if plan["world_size"] > 1 else ""
    share = (
        f"{s['samples_seen']} of {s['samples']} samples"
        if s["epochs"] < 1
        else f"of {s['samples']} samples"
    )
    return (
        f"steps     batch {s['per_device_batch_size']} x accumulation "
        f"{s['gradient_accumulation_steps']}{processes} = {s['tokens_per_step']} tokens/step; "
        f"{s['steps']} steps, {s['epochs']:.2f} epochs ({share}); warmup {s['warmup_steps']}"
    )


def _token_lines(plan: dict) -> list[str]:
    """RoPE with the source of its choice, the document-end token, the checkpoint resumed."""
    r, end, resume = plan["rope"], plan["document_end"], plan["resume"]
    lines = []
    if r["method"] != "none":
        lines.append(f"rope      {r['method']} (source: {r['source']})")
    if end:
        model_eos = end["model_eos"]
        told = f" (the model's tokenizer says eos {model_eos})" if model_eos != end["token"] else ""
        lines.append(
            f"tokens    documents end with {end['token']} (id {end['id']}), the trainer's eos "
            f"and pad{told}"
        )
    else:
        lines.append(
            "tokens    the manifest records no end-of-text token: the tokenizer's eos stays"
        )
    if resume:
        lines.append(
            f"resume    from {resume['path']} (step {resume['step']} of {plan['steps']['steps']})"
        )
    return lines


CP_CHECKPOINTING = {
    "unsloth": "layer inputs offloaded to host RAM by this path's own offload",
    True: "transformers', layer inputs stay on the GPU",
    False: "none",
}


def _context_parallel_lines(plan: dict) -> list[str]:
    cp, mem, m = plan["context_parallel"], plan["memory"], plan["model"]
    if not cp:
        return []
    n = cp["size"]
    return [
        f"parallel  context parallel {n} (Ulysses all-to-all): each GPU holds "
        f"{cp['tokens_per_gpu']} of the row's {plan['max_seq_length'] * plan['steps']['per_device_batch_size']} "
        f"tokens and attends over the whole row with {cp['heads_per_gpu']} of "
        f"{m['num_attention_heads']} heads ({cp['kv_heads_per_gpu']} of "
        f"{m['num_key_value_heads']} KV heads); plain transformers + PEFT",
        f"memory    {mem['quantization']} r={mem['lora_r']}, gradient checkpointing "
        f"{plan['gradient_checkpointing']!r} ({CP_CHECKPOINTING[plan['gradient_checkpointing']]})"
        f"{'; tiled MLP' if mem['tiled_mlp'] else ''}: "
        f"~{mem['estimated_peak_gib']} GiB peak per GPU of {mem['gpu_memory_gib']} GiB; largest "
        f"context that fits ~{mem['max_context_that_fits']} over {n} GPUs"
        + (
            f" (host RAM and GPU memory: the checkpoints the host cannot hold kept on the GPUs; "
            f"GPU memory alone ~{mem['max_context_gpu_memory']})"
            if mem.get("max_context_gpu_memory", mem["max_context_that_fits"])
            != mem["max_context_that_fits"]
            else ""
        )
        + f" (~{mem['max_context_one_gpu']} on one GPU's memory); calibrated "
        "on 2 x H200 with the 1B and 8B shapes and the tiled MLP (estimates 1.5-6.5% above the "
        "measured peaks), not measured without the tiled MLP",
        *_offload_lines(mem),
    ]


def _memory_lines(plan: dict) -> list[str]:
    if plan.get("context_parallel"):
        return _context_parallel_lines(plan)
    mem = plan["memory"]
    lines = [
        f"memory    {mem['quantization']} r={mem['lora_r']}, gradient checkpointing "
        f"{plan['gradient_checkpointing']!r}: ~{mem['estimated_peak_gib']} GiB peak of "
        f"{mem['gpu_memory_gib']} GiB; largest context that fits ~{mem['max_context_that_fits']}"
        f"{'; tiled MLP' if mem['tiled_mlp'] else ''}"
    ]
    return lines + _offload_lines(mem)


def _offload_lines(mem: dict) -> list[str]:
    lines = []
    if mem["offload"]:
        o = mem["offload"]
        host = (
            f"host RAM {o['host_memory_bytes'] / GIB:.0f} GiB holds ~{o['max_context_host']} tokens"
            if o["host_memory_bytes"]
            else "host RAM not checked"
        )
        lines.append(f"offload   checkpoints: {o['note']}; {host}")
    return lines


def _eval_line(plan: dict) -> list[str]:
    e = plan["eval"]
    if not e:
        return []
    when = (
        f"every {e['eval_steps']} steps and after the last"
        if e["eval_steps"]
        else "after the last step"
    )
    return [
        f"eval      {e['path']}: {e['samples']} validation samples ({e['tokens']} tokens), "
        f"loss {when}"
    ]


def print_plan(plan: dict) -> None:
    m, r, d = plan["model"], plan["rope"], plan["data"]
    overlap = f", overlap {d['overlap']} (context only, no label)" if d["overlap"] else ""
    lines = [
        f"data      {d['path']}: {d['samples']} samples of <= {d['seq_len']} tokens, fill "
        f"{d['fill_rate']:.3f}, tokenizer {d['tokenizer']}{overlap}",
        f"model     {m['name']}: {m['model_type']}, {m['params_b']}B params, hidden "
        f"{m['hidden_size']}, {m['num_hidden_layers']} layers, vocab {m['vocab_size']}, native "
        f"context {r['native_context']}",
        f"context   max_seq_length {plan['max_seq_length']}; RoPE {r['mode']}: {r['note']}",
        *_token_lines(plan),
        f"attention {plan['attention']}: {ATTENTION_NOTES[plan['attention']]}",
        *_memory_lines(plan),
        _steps_line(plan),
        *_eval_line(plan),
        *(f"warning   {w}" for w in plan["warnings"]),
    ]
    print("\n".join(lines))
