"""Score a model on the validation split of a pipeline output: does it use far context?

    python -m train.evaluate --model models/l150m --data out-16k --seq-len 16384 --out eval/l150m
    python -m train.evaluate --model models/l150m --adapter run/adapter --data out-16k \\
        --compare-data out-16k-shuffled --passkey-lengths 4096,16384 --out eval/l150m-lora

Reads ``shards/validation-*`` (the manifest's shards with ``"split": "validation"``, or failing
that the file-name prefix), scores each segment on its own (``train/eval_metrics.py`` defines
every metric), and writes ``OUT/eval.json``, PNG plots and ``OUT/eval.html``. Defaults: K
(``--gain-tokens``) = seq_len/8; C (``--gain-contexts``) = 256,1024,4096, those below
seq_len/2 - K; key-token margin 2.0 nats; far positions >= seq_len/2; passkey lengths
seq_len/4 and seq_len, 5 trials per length and depth.

``--compare-data OUT2`` (the same documents prepared otherwise, e.g. ``--file-order shuffled``)
adds ``order_signal``: far-position loss on OUT2's validation segments (``far_loss_baseline``)
minus on OUT's (``far_loss_project``), on the documents both hold, same model: > 0 means the
project's preparation puts more useful context before the far tokens.

Everything is checked before torch is imported (exit 2, the message names the flag): a
folder without a validation split, a model whose embedding is smaller than the data's
vocabulary or whose tokenizer.json differs, a ``--seq-len`` above the model's window after the
RoPE scaling its config declares (or ``--rope-scaling`` applies, as train.launch trained it),
missing paths. On a GPU the model runs in bf16 (autocast, ``torch.inference_mode``, SDPA).
Exit status: 0 done, 2 unusable input, 1 any other failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from train.data import DataError, read_manifest
from train.eval_metrics import (
    DEFAULT_CONTEXTS,
    PASSKEY_DEPTHS,
    EvalError,
    Segment,
    TokenScorer,
    context_gain,
    far_loss,
    mean_or_none,
    passkey,
    per_position_loss,
    read_segments,
    select_documents,
    validation_shards,
)
from train.plan import ModelShape, PlanError, plan_rope, read_model_shape

__all__ = ["EvalError", "check_inputs", "evaluate", "main"]

# ---------------------------------------------------------------- checks and the model


def model_context(shape: ModelShape) -> int:
    """The model's window after the RoPE scaling its config declares."""
    rope = shape.rope_scaling or {}
    kind = rope.get("rope_type") or rope.get("type")
    factor = float(rope.get("factor") or 1.0)
    native = shape.max_position_embeddings
    if kind in ("linear", "dynamic", "yarn", "longrope", "llama3") and factor > 1:
        original = rope.get("original_max_position_embeddings")
        return max(native, int(original * factor)) if original else int(native * factor)
    return native


def rope_override(shape: ModelShape, seq_len: int, mode: str) -> dict | None:
    """What ``--rope-scaling MODE`` changes in the config: as train.launch trains (Unsloth)."""
    plan = plan_rope(shape, seq_len, mode)
    if plan.factor <= 1 and mode in ("auto", "none"):
        return None
    params = dict(plan.unsloth_rope_scaling or {})
    if not params and (shape.rope_scaling or {}).get("rope_type") == "llama3":
        return {"max_position_embeddings": seq_len}
    if not params:  # auto beyond the window: Unsloth's linear scaling
        params = {"rope_type": "linear", "factor": plan.factor}
    return {"rope": params, "max_position_embeddings": max(seq_len, shape.max_position_embeddings)}


def _int_list(flag: str, value: str) -> list[int]:
    try:
        return [int(x) for x in re.split(r"[,\s]+", value) if x not in ("", "none")]
    except ValueError:
        raise EvalError(f"{flag} {value}: expected comma-separated token counts") from None


def _check_model(a: argparse.Namespace, manifest: dict, shape: ModelShape) -> None:
    if a.adapter and not (Path(a.adapter) / "adapter_config.json").is_file():
        raise EvalError(f"--adapter {a.adapter}: no adapter_config.json there")
    vocab = int(manifest["tokenizer"]["vocab_size"])
    if vocab > shape.vocab_size:
        raise EvalError(
            f"--model {a.model}: its embedding has {shape.vocab_size} rows but --data {a.data} "
            f"was tokenized with {vocab} ids; evaluate a model built for that tokenizer, or "
            f"re-run the pipeline with --tokenizer {a.model}"
        )
    tok_file = Path(a.model) / "tokenizer.json"
    if tok_file.is_file() and not a.allow_tokenizer_mismatch:
        sha = hashlib.sha256(tok_file.read_bytes()).hexdigest()
        if sha != manifest["tokenizer"].get("sha256", sha):
            raise EvalError(
                f"--model {a.model} ships another tokenizer.json than --data {a.data} was "
                f"tokenized with ({manifest['tokenizer']['name']}); re-run the pipeline with "
                f"--tokenizer {a.model}, or pass --allow-tokenizer-mismatch"
            )


def _check_lengths(a: argparse.Namespace, manifest: dict, shape: ModelShape) -> dict:
    """``--seq-len``, RoPE, passkey lengths, K and the C values."""
    seq_len = a.seq_len or int(manifest["seq_len"])
    if seq_len < int(manifest["seq_len"]):
        raise EvalError(
            f"--seq-len {seq_len}: --data holds segments of up to {manifest['seq_len']} tokens; "
            f"pass --seq-len {manifest['seq_len']} or more"
        )
    try:
        rope = None if a.rope_scaling == "none" else rope_override(shape, seq_len, a.rope_scaling)
    except PlanError as err:
        raise EvalError(str(err).replace("--max-seq-length", "--seq-len")) from err
    context = max(seq_len, shape.max_position_embeddings) if rope else model_context(shape)
    if seq_len > context:
        raise EvalError(
            f"--seq-len {seq_len} is above the model's context of {context} tokens "
            "(max_position_embeddings and its RoPE scaling); lower --seq-len, or pass "
            "--rope-scaling auto|linear|yarn|ntk as the model was trained (train.launch)"
        )
    if a.passkey_lengths is None:
        lengths = sorted({max(256, seq_len // 4), seq_len})
    else:
        lengths = [n for n in _int_list("--passkey-lengths", a.passkey_lengths) if n > 0]
    if any(n > context for n in lengths):
        raise EvalError(f"--passkey-lengths: {max(lengths)} is above the model's {context}")
    k = a.gain_tokens or max(1, seq_len // 8)
    room = seq_len // 2 - k
    if a.gain_contexts:
        contexts = _int_list("--gain-contexts", a.gain_contexts)
        if any(c < 1 or c >= room for c in contexts):
            raise EvalError(
                f"--gain-contexts {a.gain_contexts}: each C must be in [1, {room}) "
                f"(seq_len/2 - --gain-tokens {k}), so that it really cuts the context"
            )
    else:
        contexts = [c for c in DEFAULT_CONTEXTS if c < room]
    return {
        "seq_len": seq_len,
        "rope": rope,
        "context": context,
        "passkey_lengths": lengths,
        "gain_tokens": k,
        "gain_contexts": contexts,
    }


def _compare_segments(a: argparse.Namespace, manifest: dict, docs: set[str]) -> list[Segment]:
    """``--compare-data``'s validation segments of the documents ``--data`` holds too."""
    try:
        other = read_manifest(a.compare_data, "--compare-data")
    except DataError as err:
        raise EvalError(str(err)) from err
    if other["tokenizer"].get("sha256") != manifest["tokenizer"].get("sha256"):
        raise EvalError(
            f"--compare-data {a.compare_data} was tokenized with another tokenizer than --data"
        )
    segments = read_segments(validation_shards(a.compare_data, other, "--compare-data"))
    baseline = [s for s in segments if s.doc_id in docs]
    if not baseline:
        raise EvalError(
            f"--compare-data {a.compare_data}: holds none of the validation documents of "
            f"--data {a.data}; prepare the same corpus with the same --eval-fraction"
        )
    return baseline


def check_inputs(a: argparse.Namespace) -> dict:
    """Everything decided before torch is imported; raises EvalError (exit 2)."""
    if not Path(a.data).is_dir():
        raise EvalError(f"--data {a.data}: no such folder")
    try:
        manifest = read_manifest(a.data)
        shape = read_model_shape(a.model)
    except (DataError, PlanError) as err:
        raise EvalError(str(err)) from err
    _check_model(a, manifest, shape)
    checked = _check_lengths(a, manifest, shape)
    segments = read_segments(validation_shards(a.data, manifest))
    segments = [s for s in segments if len(s.ids) >= a.min_segment_tokens]
    segments = select_documents(segments, a.max_tokens)
    if not segments:
        raise EvalError(f"--min-segment-tokens {a.min_segment_tokens}: no validation segment left")
    docs = {s.doc_id for s in segments}
    baseline = _compare_segments(a, manifest, docs) if a.compare_data else None
    return {**checked, "manifest": manifest, "segments": segments, "baseline": baseline}


def load_model(model: str, adapter: str | None, device, rope: dict | None):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model)
    if rope:
        config.max_position_embeddings = rope["max_position_embeddings"]
        if "rope" in rope and hasattr(config, "rope_parameters"):  # transformers 5
            theta = (config.rope_parameters or {}).get("rope_theta", 10000.0)
            config.rope_parameters = {"rope_theta": theta, **rope["rope"]}
        elif "rope" in rope:
            config.rope_scaling = rope["rope"]
            if "rope_theta" in rope["rope"]:
                config.rope_theta = rope["rope"]["rope_theta"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    m = AutoModelForCausalLM.from_pretrained(
        model, config=config, dtype=dtype, attn_implementation="sdpa"
    )
    if adapter:
        from peft import PeftModel

        m = PeftModel.from_pretrained(m, adapter).merge_and_unload()
    return m.to(device).eval()


# ---------------------------------------------------------------- the run and its outputs


def load_encoder(model: str):
    """text -> ids with the model's own tokenizer (no special tokens added), for passkeys."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model)
    except Exception as err:  # transformers raises OSError, ValueError...
        raise EvalError(
            f"--model {model}: no tokenizer to build passkey prompts ({err}); "
            "pass --passkey-lengths none"
        ) from err

    def encode(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    return encode


def pick_device(name: str):
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise EvalError("--device cuda: no CUDA device here; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def order_signal(scorer, baseline, segments, full, seq_len: int, gain_args: dict) -> dict:
    """The same model's far-position loss on the baseline preparation of the validation
    documents minus on the project's (positions >= seq_len/2, documents both hold)."""
    common = {s.doc_id for s in baseline}
    base_full = scorer.score([s.ids for s in baseline])
    project = [x for x, s in zip(full, segments, strict=True) if s.doc_id in common]
    far_from = seq_len // 2
    (fp, n_p), (fb, n_b) = far_loss(project, far_from), far_loss(base_full, far_from)
    return {
        "far_loss_project": fp,
        "far_loss_baseline": fb,
        "difference": None if fp is None or fb is None else fb - fp,
        "far_from": far_from,
        "tokens_project": n_p,
        "tokens_baseline": n_b,
        "documents": len(common),
        "per_position_loss_baseline": per_position_loss(base_full, seq_len),
        "context_gain_baseline": context_gain(scorer, baseline, base_full, **gain_args)[0],
    }


def evaluate(a: argparse.Namespace, checked: dict) -> dict:
    """Load the model and compute every metric; returns what goes into eval.json."""
    import platform

    import torch

    started = time.time()
    device = pick_device(a.device)
    encode = load_encoder(a.model) if checked["passkey_lengths"] else None
    model = load_model(a.model, a.adapter, device, checked["rope"])
    on_gpu = device.type == "cuda"
    seq_len, segments = checked["seq_len"], checked["segments"]
    batch_tokens = a.batch_tokens or max(seq_len, 65536 if on_gpu else 8192)
    scorer = TokenScorer(
        model, device, batch_tokens=batch_tokens, logit_elements=2**27 if on_gpu else 2**24
    )
    full = scorer.score([s.ids for s in segments])
    gain_args = dict(
        seq_len=seq_len,
        k=checked["gain_tokens"],
        contexts=checked["gain_contexts"],
        margin=a.key_margin,
    )
    gain, key = context_gain(scorer, segments, full, **gain_args)
    result = {
        "model": a.model,
        "adapter": a.adapter,
        "data": a.data,
        "compare_data": a.compare_data,
        "seq_len": seq_len,
        "tokens_scored": int(sum(len(x) for x in full)),
        "segments": len(segments),
        "documents": len({s.doc_id for s in segments}),
        "mean_loss": mean_or_none(np.concatenate(full)) if full else None,
        "per_position_loss": per_position_loss(full, seq_len),
        "context_gain": gain,
        "key_token_loss": key,
    }
    if checked["baseline"] is not None:
        result["order_signal"] = order_signal(
            scorer, checked["baseline"], segments, full, seq_len, gain_args
        )
    lengths = checked["passkey_lengths"]
    result["passkey"] = (
        passkey(scorer, encode, lengths, trials=a.passkey_trials, seed=a.seed) if lengths else []
    )
    elapsed = time.time() - started
    result.update(
        device=torch.cuda.get_device_name(device) if on_gpu else f"cpu ({platform.machine()})",
        dtype="bfloat16" if on_gpu else "float32",
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        elapsed_s=round(elapsed, 2),
        settings={
            "gain_tokens": checked["gain_tokens"],
            "gain_contexts": checked["gain_contexts"],
            "key_margin": a.key_margin,
            "far_from": seq_len // 2,
            "passkey_trials": a.passkey_trials,
            "passkey_method": "teacher-forced argmax of every answer token (= greedy decoding)",
            "max_tokens": a.max_tokens,
            "min_segment_tokens": a.min_segment_tokens,
            "batch_tokens": batch_tokens,
            "rope_scaling": a.rope_scaling,
            "seed": a.seed,
        },
    )
    return result


def write_plots(result: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        names.append(name)

    fig, ax = plt.subplots(figsize=(6.4, 4))
    curves = [("--data", result["per_position_loss"])]
    if "order_signal" in result:
        curves.append(("--compare-data", result["order_signal"]["per_position_loss_baseline"]))
    for label, rows in curves:
        pts = [((r["start"] + r["end"]) / 2, r["loss"]) for r in rows if r["loss"] is not None]
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="position in segment (bucket middle)", ylabel="mean loss (nats)")
    ax.set_title("Loss by position")
    ax.legend()
    save(fig, "per_position_loss.png")
    if result["context_gain"]:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        rows = result["context_gain"]
        xs = [str(r["context"]) for r in rows]
        ax.bar(xs, [r["loss_truncated"] or 0 for r in rows], label="last C tokens of context")
        ax.axhline(rows[0]["loss_full"] or 0, color="k", ls="--", label="full context")
        ax.set(xlabel="C", ylabel=f"loss of the last {result['settings']['gain_tokens']} tokens")
        ax.set_title("Context gain")
        ax.legend()
        save(fig, "context_gain.png")
    if result["passkey"]:
        lengths = sorted({r["length"] for r in result["passkey"]})
        grid = np.array(
            [[r["accuracy"] for r in result["passkey"] if r["length"] == n] for n in lengths]
        )
        fig, ax = plt.subplots(figsize=(6.4, 1.2 + 0.5 * len(lengths)))
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(PASSKEY_DEPTHS)), [str(d) for d in PASSKEY_DEPTHS])
        ax.set_yticks(range(len(lengths)), [str(n) for n in lengths])
        ax.set(xlabel="depth", ylabel="length (tokens)", title="Passkey accuracy")
        fig.colorbar(im, ax=ax)
        save(fig, "passkey.png")
    return names


def write_html(result: dict, plots: list[str], out_dir: Path) -> None:
    import html

    def table(rows: list[dict]) -> str:
        if not rows:
            return "<p>none</p>"
        keys = [k for k in rows[0] if not isinstance(rows[0][k], list | dict)]
        head = "".join(f"<th>{k}</th>" for k in keys)
        body = "".join(
            "<tr>"
            + "".join(
                f"<td>{r[k]:.4f}</td>" if isinstance(r[k], float) else f"<td>{r[k]}</td>"
                for k in keys
            )
            + "</tr>"
            for r in rows
        )
        return f"<table><tr>{head}</tr>{body}</table>"

    facts = {k: result[k] for k in ("model", "adapter", "data", "compare_data", "seq_len")}
    facts.update({k: result[k] for k in ("tokens_scored", "documents", "device", "date")})
    facts["elapsed_s"] = result["elapsed_s"]
    parts = [
        "<!doctype html><meta charset='utf-8'><title>longctx evaluation</title>",
        "<style>body{font-family:sans-serif;max-width:60em}td,th{padding:2px 8px}</style>",
        "<h1>Evaluation</h1><ul>",
        *(f"<li>{k}: {html.escape(str(v))}</li>" for k, v in facts.items()),
        "</ul><h2>Loss by position</h2>",
        table(result["per_position_loss"]),
        "<h2>Context gain</h2>",
        table(result["context_gain"]),
        "<h2>Key-token loss</h2>",
        table([result["key_token_loss"]]),
        "<h2>Passkey</h2>",
        table(result["passkey"]),
    ]
    if "order_signal" in result:
        parts += ["<h2>Order signal</h2>", table([result["order_signal"]])]
    parts += [f"<p><img src='{name}' alt='{name}'></p>" for name in plots]
    (out_dir / "eval.html").write_text("\n".join(parts) + "\n", encoding="utf-8")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog="python -m train.evaluate", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", required=True, help="model folder (config.json, weights, tokenizer)")
    p.add_argument("--adapter", help="a PEFT/LoRA adapter folder to merge into --model")
    p.add_argument(
        "--data", required=True, help="a finished pipeline output with a validation split"
    )
    p.add_argument("--out", required=True, help="folder for eval.json, PNG plots and eval.html")
    p.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="longest position scored, tokens (default: the data's)",
    )
    p.add_argument("--compare-data", help="the same documents prepared otherwise: order_signal")
    p.add_argument(
        "--passkey-lengths",
        default=None,
        help="prompt lengths in tokens, comma-separated; 'none' = skip (default seq_len/4,seq_len)",
    )
    p.add_argument("--passkey-trials", type=int, default=5, help="trials per length and depth")
    p.add_argument(
        "--gain-tokens", type=int, default=None, help="K: tail tokens scored (default seq_len/8)"
    )
    p.add_argument(
        "--gain-contexts",
        default=None,
        help="C values in tokens, comma-separated (default 256,1024,4096 below seq_len/2 - K)",
    )
    p.add_argument("--key-margin", type=float, default=2.0, help="key-token loss drop, nats")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="score whole documents up to ~N tokens (default all)",
    )
    p.add_argument(
        "--min-segment-tokens",
        type=int,
        default=0,
        help="score only segments of at least N tokens (seq_len: full-length windows only, so "
        "every position bucket holds the same windows; default 0 = all)",
    )
    p.add_argument(
        "--batch-tokens",
        type=int,
        default=None,
        help="padded tokens per forward pass (default max(seq_len, 65536) on GPU, 8192 on CPU)",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto = cuda when there is one (bf16), else cpu (fp32)",
    )
    p.add_argument(
        "--rope-scaling",
        default="none",
        help="none (the model's own config) or auto|linear|yarn|ntk|llama3 as train.launch trained",
    )
    p.add_argument(
        "--allow-tokenizer-mismatch",
        action="store_true",
        help="score even when the model's tokenizer.json differs from the data's",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the passkeys")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        checked = check_inputs(a)
        result = evaluate(a, checked)
    except EvalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
    write_html(result, write_plots(result, out), out)
    buckets = ", ".join(
        f"{r['start']}-{r['end']}: {r['loss']:.3f}"
        for r in result["per_position_loss"]
        if r["loss"]
    )
    print(f"{result['tokens_scored']} tokens in {result['elapsed_s']} s on {result['device']}")
    print(f"loss by position  {buckets}")
    for r in result["context_gain"]:
        print(f"context {r['context']:>6}  loss {r['loss_truncated']} vs full {r['loss_full']}")
    if "order_signal" in result:
        print(f"order_signal difference {result['order_signal']['difference']}")
    print(out / "eval.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
