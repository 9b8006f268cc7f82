"""Helpers of ``benchmarks/multi_gpu.sh`` (the 2-GPU measurements of issue 21).

    python benchmarks/multi_gpu.py data --tokenizer DIR --seq-len L --rows N --out DIR
    python benchmarks/multi_gpu.py record --name NAME --rc RC --log LOG --run DIR --out JSON
    python benchmarks/multi_gpu.py report --results DIR --out benchmarks/results/multi_gpu.json

``data`` writes a pipeline-shaped output folder (manifest.json, documents.arrow, one train shard)
whose rows are exactly ``--seq-len`` tokens, each packed from documents of ``--doc-tokens``
random token ids ending with the tokenizer's end-of-text: memory and speed depend on the shape
and the row layout, not on the text (GPU-NOTES.md), and no pipeline (no Apache Beam) runs on the
GPU machine. ``record`` turns one finished ``train.launch`` run into a result file; ``report``
writes the summary JSON from the recorded results only (a figure that was not measured is null).

The longest context is extrapolated, not searched: one step of the 1B shape at 256K tokens takes
over a minute on an H200 and grows with the square of the context, so a step at the ~1M tokens
the GPU holds would take most of a session's device time. Peak memory is linear in the context
on both paths (memory-efficient attention, offloaded checkpoints, chunked loss): the report
takes the line through the two longest measured peaks to 95% of the GPU, and bounds it by the
host RAM the offloaded checkpoints need.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---------------------------------------------------------------------------------------------
# data


def _write_stream(path: Path, table) -> None:
    import pyarrow as pa

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def make_data(tokenizer: str, seq_len: int, rows: int, doc_tokens: int, out: str, seed: int = 0):
    """A pipeline-shaped output of ``rows`` rows of exactly ``seq_len`` random tokens, each row
    packed from documents of ``doc_tokens`` (the last one shorter) that end with the
    end-of-text token."""
    import numpy as np
    import pyarrow as pa
    from tokenizers import Tokenizer

    root = Path(out)
    manifest_path = root / "manifest.json"
    if manifest_path.is_file():
        m = json.loads(manifest_path.read_text())
        if m["seq_len"] == seq_len and m["counts"]["samples"] >= rows:
            return root
    tok_file = Path(tokenizer) / "tokenizer.json"
    tok = Tokenizer.from_file(str(tok_file))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    eot = tok.token_to_id("<|endoftext|>")
    rng = np.random.default_rng(seed)
    lengths = [doc_tokens] * (seq_len // doc_tokens)
    if seq_len % doc_tokens:
        lengths.append(seq_len % doc_tokens)
    ids, segs, doc_ids, doc_n = [], [], [], []
    for r in range(rows):
        row = rng.integers(0, min(vocab, eot), size=seq_len, dtype=np.int32)
        row[np.cumsum(lengths) - 1] = eot
        ids.append(row)
        segs.append(np.asarray(lengths, dtype=np.int32))
        doc_ids += [f"synthetic-{r}-{i}" for i in range(len(lengths))]
        doc_n += lengths
    (root / "shards").mkdir(parents=True, exist_ok=True)
    shard = pa.table(
        {
            "input_ids": pa.array(ids, type=pa.list_(pa.int32())),
            "seq_lengths": pa.array(segs, type=pa.list_(pa.int32())),
        }
    )
    shard_path = "shards/train-00000-of-00001.arrow"
    _write_stream(root / shard_path, shard)
    _write_stream(
        root / "documents.arrow",
        pa.table({"doc_id": doc_ids, "n_tokens": pa.array(doc_n, type=pa.int64())}),
    )
    tokens = rows * seq_len
    manifest = {
        "format_version": 1,
        "pipeline": "benchmarks/multi_gpu.py synthetic rows (random token ids)",
        "seq_len": seq_len,
        "overlap": 0,
        "tokenizer": {
            "name": str(tokenizer),
            "vocab_size": vocab,
            "sha256": hashlib.sha256(tok_file.read_bytes()).hexdigest(),
            "end_of_text": "<|endoftext|>",
            "end_of_text_id": eot,
        },
        "counts": {"documents": len(doc_n), "samples": rows, "tokens": tokens},
        "fill_rate": 1.0,
        "shards": [
            {
                "path": shard_path,
                "split": "train",
                "rows": rows,
                "tokens": tokens,
                "sha256": hashlib.sha256((root / shard_path).read_bytes()).hexdigest(),
            }
        ],
    }
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return root


# ---------------------------------------------------------------------------------------------
# the planner's figures for a measured point


MODES = ("unsloth1", "unsloth1t", "cp2", "cp2t")
# results/<folder>: context-parallel runs measured with earlier code, reported under <key>
EARLIER = {
    "before-lean": "context_parallel_before_lean_activations",  # commit 2731af2
    "before-chunked-norm": "context_parallel_before_chunked_norm",  # commit 5aecd10
}
DEFAULT_LORA = {"lora_r": 16, "modules": DEFAULT_MODULES, "gc": "unsloth"}
QLORA = {"lora_r": 32, "modules": DEFAULT_MODULES, "gc": "unsloth"}


def planner_peak_gib(config_dir: str, mode: str, context: int, kept_layers: int = 0) -> float:
    """train/plan.py's estimated peak GPU memory per GPU (GiB) of one micro-step of ``mode``
    (unsloth1: bf16 LoRA r16 on one GPU; cp2: the same over 2 GPUs with context parallelism;
    a trailing t: with the tiled MLP; qlora1/qlora2: 4-bit QLoRA r32, per GPU) at ``context``
    tokens, with ``kept_layers`` checkpoint layers kept on the GPU (each rank its share)."""
    from train.plan import GIB, estimate_cp_peak_bytes, estimate_peak_bytes, read_model_shape

    shape = read_model_shape(config_dir)
    tiled = mode.endswith("t")
    if mode.startswith("cp2"):
        peak = estimate_cp_peak_bytes(shape, context, 2, **DEFAULT_LORA, tiled_mlp=tiled)
    else:
        sizes = QLORA if mode.startswith("qlora") else DEFAULT_LORA
        peak = estimate_peak_bytes(
            shape, context, load_in_4bit=mode.startswith("qlora"), **sizes, tiled_mlp=tiled
        )
    ranks = 2 if mode.startswith("cp2") else 1
    peak += kept_layers * -(-context // ranks) * shape.hidden_size * 2
    return round(peak / GIB, 2)


# ---------------------------------------------------------------------------------------------
# the longest context, from measured peaks


def fit_line(points: dict[int, float]) -> tuple[float, float] | None:
    """``(intercept, slope per token)`` through the two longest measured points (peak memory is
    linear in the context on both paths: memory-efficient attention, offloaded checkpoints,
    chunked loss), or None with fewer than two."""
    if len(points) < 2:
        return None
    (l1, y1), (l2, y2) = sorted(points.items())[-2:]
    slope = (y2 - y1) / (l2 - l1)
    return y2 - slope * l2, slope


def longest_context(points: dict[int, float], capacity: float) -> int | None:
    """The longest context (a multiple of 1024) whose peak, extrapolated on the line through the
    two longest measured points, stays within ``capacity``; None without two points or with a
    peak that does not grow."""
    line = fit_line(points)
    if line is None or line[1] <= 0:
        return None
    intercept, slope = line
    return max(0, int((capacity - intercept) / slope) // 1024 * 1024)


# ---------------------------------------------------------------------------------------------
# one run -> one result file


OOM = re.compile(r"OutOfMemoryError|CUDA out of memory|out of memory", re.IGNORECASE)


def record(name: str, rc: int, log: str, run: str, out: str, extra: dict | None = None) -> dict:
    """The result of one ``train.launch`` run: fit (exit 0 and a summary), oom, refused (exit
    2: the plan refused it, the message kept), timeout (exit 124) or error. A fit keeps the
    summary's figures and the loss of every step (log_history.json)."""
    text = Path(log).read_text(errors="replace") if Path(log).is_file() else ""
    summary_path = Path(run) / "train_summary.json"
    result: dict = {"name": name, "rc": rc, "recorded": time.strftime("%Y-%m-%d %H:%M:%S")}
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if summary is None and rc == 0:  # the run folder is gone: train.launch printed it too
        lines = [ln for ln in text.splitlines() if ln.startswith("summary {")]
        summary = json.loads(lines[-1][len("summary ") :]) if lines else None
        result["from_log"] = True
    if rc == 0 and summary:
        s = summary
        keys = (
            "max_seq_length",
            "steps",
            "gradient_accumulation_steps",
            "tokens",
            "runtime_s",
            "tokens_per_s",
            "tokens_per_s_steady",
            "peak_gib",
            "peak_reserved_gib",
            "host_peak_rss_gib",
            "world_size",
            "context_parallel",
            "backend",
            "offload_pinned",
            "estimated_peak_gib",
            "checkpoint_layers_on_gpu",
            "resident_checkpoint_calls",
            "first_loss",
            "last_loss",
            "device",
        )
        result.update(status="fit", **{k: s.get(k) for k in keys})
        history = Path(run) / "log_history.json"
        if history.is_file():
            log_history = json.loads(history.read_text())
            result["losses"] = [h["loss"] for h in log_history if "loss" in h]
        else:  # the Trainer's printed logs, rounded to 4 digits
            printed = re.findall(r"\{'loss': '([0-9.e+-]+)'", text)
            result["losses"] = [float(x) for x in printed]
    else:
        result.update(_failure(rc, text))
    result.update(extra or {})
    Path(out).write_text(json.dumps(result, indent=1))
    return result


def _failure(rc: int, text: str) -> dict:
    """Why a run did not fit: timeout (exit 124), oom, refused (exit 2, the message kept) or
    error (the log's last lines)."""
    if rc == 124:
        return {"status": "timeout"}
    if OOM.search(text):
        return {"status": "oom"}
    if rc == 2:
        return {
            "status": "refused",
            "message": [ln for ln in text.splitlines() if "error" in ln][-1:],
        }
    return {"status": "error", "tail": text.splitlines()[-15:]}


def record_bare(name: str, rc: int, log: str, out: str, context: int) -> dict:
    """The result of one ``benchmarks/bare_unsloth.py`` run: its last ``result {...}`` line
    (fit), or why it failed, as :func:`record`."""
    text = Path(log).read_text(errors="replace") if Path(log).is_file() else ""
    lines = [ln for ln in text.splitlines() if ln.startswith("result {")]
    result: dict = {
        "name": name,
        "rc": rc,
        "recorded": time.strftime("%Y-%m-%d %H:%M:%S"),
        "context": context,
        "backend": "bare unsloth (benchmarks/bare_unsloth.py)",
    }
    if rc == 0 and lines:
        result.update(status="fit", **json.loads(lines[-1][len("result ") :]))
    else:
        result.update(_failure(rc, text))
    Path(out).write_text(json.dumps(result, indent=1))
    return result


# ---------------------------------------------------------------------------------------------
# the report


def _load(results: Path, name: str) -> dict | None:
    p = results / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _steady(r: dict | None):
    return (r or {}).get("tokens_per_s_steady") if (r or {}).get("status") == "fit" else None


def runs(results: Path, shape: str, mode: str) -> dict[int, dict]:
    """``{context: result}`` of the recorded runs ``<mode>-<shape>-<context>.json``."""
    found = {}
    for p in results.glob(f"{mode}-{shape}-*.json"):
        m = re.fullmatch(rf"{re.escape(mode)}-{re.escape(shape)}-(\d+)\.json", p.name)
        if m:
            found[int(m.group(1))] = json.loads(p.read_text())
    return found


def kept_layers(tokens: int, layers: int, layer_bytes_per_token: int, host_gib: float) -> int:
    """Layers whose offloaded checkpoints the host cannot hold at ``tokens`` (the first layers
    keep theirs on the GPUs instead: train/plan.py's plan_offload, host RAM less 16 GiB)."""
    room = (host_gib - 16) * 2**30
    per_layer = tokens * layer_bytes_per_token
    if layers * per_layer <= room:
        return 0
    return min(layers, -(-int(layers * per_layer - max(0.0, room)) // per_layer))


def longest_with_kept_layers(
    line: tuple[float, float] | None,
    capacity: float,
    ranks: int,
    layers: int,
    layer_bytes_per_token: int,
    host_gib: float,
) -> int | None:
    """The longest context (a multiple of 1024) at which the activations' line (GiB against
    tokens) plus the checkpoints the host cannot hold (kept on the GPUs, each rank its 1/ranks
    share of a kept layer) stay within ``capacity`` GiB per GPU; None without a line."""
    if line is None or line[1] <= 0:
        return None
    intercept, slope = line

    def fits(n: int) -> bool:
        kept = kept_layers(n, layers, layer_bytes_per_token, host_gib)
        on_gpu = kept * -(-n // ranks) * layer_bytes_per_token
        return intercept + slope * n + on_gpu / 2**30 <= capacity

    lo, hi = 0, 1024
    while fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1024:  # fits(lo), not fits(hi)
        mid = (lo + hi) // 2 // 1024 * 1024
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def mode_figures(
    results: Path,
    shape: str,
    mode: str,
    gpu_gib: float,
    host_gib: float,
    layers: int,
    layer_bytes_per_token: int,
) -> dict:
    """One shape and mode: every measured point (peak GPU memory, host RSS, seconds per step,
    the planner's estimate and its error), and the longest context: on the line through the two
    longest measured peaks (less the checkpoints a run kept on the GPU) to ``gpu_gib`` x 0.95
    (the planner's headroom), with the checkpoints the host RAM cannot hold kept on the GPUs
    (``longest_context``); ``longest_by_host_ram`` is where the host alone holds every layer's
    checkpoints."""
    done = runs(results, shape, mode)
    config = results / f"config-{shape}"
    ranks = 2 if mode.startswith("cp2") else 1
    points, peaks = {}, {}
    for L, r in sorted(done.items()):
        point = {"status": r["status"]}
        if r["status"] == "fit":
            steps = max(1, r.get("steps") or 1)
            kept = r.get("checkpoint_layers_on_gpu") or 0
            planned = planner_peak_gib(str(config), mode, L, kept) if config.is_dir() else None
            point.update(
                peak_gib=r["peak_gib"],
                peak_reserved_gib=r["peak_reserved_gib"],
                host_peak_rss_gib=r["host_peak_rss_gib"],
                seconds_per_step=round(r["runtime_s"] / steps, 2),
                tokens_per_s_steady=r.get("tokens_per_s_steady"),
                checkpoint_layers_on_gpu=kept,
                planner_peak_gib=planned,
                planner_error=(
                    round(planned / r["peak_gib"] - 1, 3) if planned and r["peak_gib"] else None
                ),
            )
            if r["peak_gib"] is not None:  # None on a CPU
                kept_gib = kept * -(-L // ranks) * layer_bytes_per_token / 2**30
                peaks[L] = r["peak_gib"] - kept_gib
        points[str(L)] = point
    line = fit_line(peaks)
    gpu_cap = round(0.95 * gpu_gib, 2)
    # offloaded checkpoints: every layer's input, bf16, on the host (both ranks of one host
    # together hold one row's worth under context parallelism too)
    by_host = int((host_gib - 16) * 2**30 / (layers * layer_bytes_per_token)) // 1024 * 1024
    longest = longest_with_kept_layers(
        line, gpu_cap, ranks, layers, layer_bytes_per_token, host_gib
    )
    ooms = [L for L, r in done.items() if r["status"] == "oom"]
    smallest_oom = min(ooms) if ooms else None
    if longest is not None and smallest_oom:  # a run out of memory bounds the line from above
        longest = min(longest, smallest_oom - 1024)
    if longest is not None and peaks:  # and one that ran, from below
        longest = max(longest, max(peaks))
    return {
        "points": points,
        "largest_that_ran": max(peaks) if peaks else None,
        "smallest_out_of_memory": smallest_oom,
        "gib_per_1k_tokens": round(line[1] * 1024, 4) if line else None,
        "fixed_gib": round(line[0], 2) if line else None,
        "longest_by_gpu_memory": longest_context(peaks, gpu_cap),
        "longest_by_host_ram": by_host,
        "longest_context": longest,
    }


def report(
    results: Path,
    out: Path,
    shapes: list[str],
    speed_len: int,
    gpu_gib: float | None = None,
    host_gib: float = 256.0,
) -> dict:
    """benchmarks/results/multi_gpu.json from the recorded results; what was not measured is
    null. ``cp_context_ratio``: per shape, the longest context over 2 GPUs with
    --context-parallel 2 / the longest on 1 GPU through Unsloth (bf16 LoRA r16, offloaded
    checkpoints in both), each extrapolated from measured peaks. ``dp_speedup``: steady
    tokens/s of the 8B QLoRA shape with --nproc-per-node 2 / one GPU with accumulation 2 (the
    same rows in each optimizer step)."""
    device = (
        (results / "device.txt").read_text().strip() if (results / "device.txt").is_file() else None
    )
    if gpu_gib is None:
        found = re.search(r"(\d+) MiB", device or "")
        gpu_gib = int(found.group(1)) / 1024 if found else 0.0
    figures, ratios, measured, by_variant, dims = {}, {}, {}, {}, {}
    for shape in shapes:
        config = results / f"config-{shape}" / "config.json"
        if config.is_file():
            c = json.loads(config.read_text())
            dims[shape] = (c["num_hidden_layers"], c["hidden_size"] * 2)
        else:
            dims[shape] = (1, 1)
        modes = {m: mode_figures(results, shape, m, gpu_gib, host_gib, *dims[shape]) for m in MODES}
        speeds = {m: _steady(_load(results, f"{m}-{shape}-{speed_len}")) for m in MODES}
        figures[shape] = {**modes, f"tokens_per_s_at_{speed_len}": speeds}

        def best(names, modes=modes):
            found = [modes[m]["longest_context"] for m in names if modes[m]["longest_context"]]
            return max(found) if found else None

        a, b = best(("unsloth1", "unsloth1t")), best(("cp2", "cp2t"))
        ratios[shape] = round(b / a, 3) if a and b else None
        # from runs alone: the longest two-GPU run over the shortest context at which the
        # one-GPU mode that goes furthest (by its longest_context) ran out of memory; null
        # without such a run (an out-of-memory run of another mode bounds only that mode)
        ran = [
            modes[m]["largest_that_ran"] for m in ("cp2", "cp2t") if modes[m]["largest_that_ran"]
        ]
        ones = [m for m in ("unsloth1", "unsloth1t") if modes[m]["longest_context"]]
        furthest = max(ones, key=lambda m: modes[m]["longest_context"]) if ones else None
        oom = modes[furthest]["smallest_out_of_memory"] if furthest else None
        measured[shape] = (
            {"ratio": round(max(ran) / oom, 3), "two_gpus_ran": max(ran),
             "one_gpu_out_of_memory": oom, "one_gpu_mode": furthest}
            if ran and oom
            else None
        )  # fmt: skip
        for one, two in (("unsloth1", "cp2"), ("unsloth1t", "cp2t")):
            x, y = best((one,)), best((two,))
            by_variant.setdefault(shape, {})[f"{two}/{one}"] = round(y / x, 3) if x and y else None

    # context-parallel runs of earlier code, each folder under its key
    earlier = {
        key: {
            shape: {
                m: mode_figures(results / folder, shape, m, gpu_gib, host_gib, *dims[shape])
                for m in ("cp2", "cp2t")
                if runs(results / folder, shape, m)
            }
            for shape in shapes
        }
        for folder, key in EARLIER.items()
    }
    ddp = {n: _load(results, f"qlora{n}-{shapes[-1]}-{speed_len}") for n in (1, 2)}
    t1, t2 = _steady(ddp[1]), _steady(ddp[2])
    data = {
        "issue": 21,
        "device": device,
        "date": time.strftime("%Y-%m-%d"),
        "commit": os.environ.get("MULTI_GPU_COMMIT") or None,
        "gpu_gib": round(gpu_gib, 2),
        "host_gib": host_gib,
        "dp_speedup": round(t2 / t1, 3) if t1 and t2 else None,
        "dp": {
            "tokens_per_s_steady": {"1gpu_accumulation_2": t1, "2gpu_ddp": t2},
            "losses": {
                "1gpu_accumulation_2": (ddp[1] or {}).get("losses"),
                "2gpu_ddp": (ddp[2] or {}).get("losses"),
            },
            "peak_gib": {
                "1gpu": (ddp[1] or {}).get("peak_gib"),
                "2gpu": (ddp[2] or {}).get("peak_gib"),
            },
            "shape": shapes[-1],
            "context": speed_len,
        },
        # the contract's one figure: the smallest over the shapes measured (per shape below)
        "cp_context_ratio": min((r for r in ratios.values() if r), default=None),
        "cp_context_ratio_by_shape": ratios,
        "cp_context_ratio_measured": measured,
        "cp_context_ratio_by_variant": by_variant,
        "shapes": figures,
        **earlier,
        "definitions": {
            "cp_context_ratio": "the smallest of cp_context_ratio_by_shape over the shapes "
            "measured; a shape without context-parallel runs of the current code is null there "
            "and left out (its earlier runs: the context_parallel_before_* keys)",
            "cp_context_ratio_measured": "per shape, from runs alone (no extrapolation): the "
            "longest context a two-GPU run (cp2, cp2t) trained over the shortest at which the "
            "one-GPU mode that goes furthest (one_gpu_mode: unsloth1 or unsloth1t, the longer "
            "longest_context) ran out of GPU memory: a lower bound of the ratio against that "
            "mode; null without both runs",
            "cp_context_ratio_by_shape": "per shape: the longest context over 2 GPUs with "
            "--context-parallel 2 (cp2, or cp2t with --tiled-mlp true, whichever is longer) / the "
            "longest on 1 GPU through Unsloth (unsloth1, or unsloth1t with its tiled MLP); bf16 "
            "LoRA r16 and offloaded checkpoints in all; each longest_context, extrapolated (the "
            "runs at the longest lengths are under points, with largest_that_ran)",
            "modes": "unsloth1: one GPU, Unsloth; cp2: two GPUs, --context-parallel 2 (plain "
            "transformers + PEFT); a trailing t: --tiled-mlp true; qlora1/qlora2: the 8B shape "
            "4-bit QLoRA r32 on one GPU (accumulation 2) / two (DDP)",
            "longest_context": "the longest context at which the line through the two longest "
            "measured peaks (max_memory_allocated, less the checkpoints a run kept on the GPU) "
            "plus the checkpoints the host cannot hold (host_gib less 16 GiB; the first layers "
            "keep theirs on the GPUs, each rank its share, as train.launch plans) stays within "
            "95% of the GPU's memory; never past a run that ran out of memory "
            "(smallest_out_of_memory - 1024) nor short of one that ran (largest_that_ran)",
            "longest_by_gpu_memory": "the context at which the line through the two longest "
            "measured peaks (max_memory_allocated) reaches 95% of the GPU's memory, the host "
            "holding every checkpoint",
            "longest_by_host_ram": "the context whose offloaded checkpoints (layers x hidden x 2 "
            "bytes a token, both ranks of one host together) fit host_gib less 16 GiB",
            "dp_speedup": "steady tokens/s (after the first step) of the Llama-3.1-8B shape, 4-bit "
            f"QLoRA r32, at {speed_len} tokens: --nproc-per-node 2 over one GPU with gradient "
            "accumulation 2 (two rows an optimizer step in both)",
            "data": "synthetic rows of random token ids, documents of --doc-tokens tokens each "
            "(benchmarks/multi_gpu.py data)",
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    return data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python benchmarks/multi_gpu.py", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--tokenizer", required=True)
    d.add_argument("--seq-len", type=int, required=True)
    d.add_argument("--rows", type=int, default=2)
    d.add_argument("--doc-tokens", type=int, default=32768)
    d.add_argument("--out", required=True)
    r = sub.add_parser("record")
    r.add_argument("--name", required=True)
    r.add_argument("--rc", type=int, required=True)
    r.add_argument("--log", required=True)
    r.add_argument("--run", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--context", type=int, default=None)
    rb = sub.add_parser("record-bare")
    rb.add_argument("--name", required=True)
    rb.add_argument("--rc", type=int, required=True)
    rb.add_argument("--log", required=True)
    rb.add_argument("--out", required=True)
    rb.add_argument("--context", type=int, required=True)
    rep = sub.add_parser("report")
    rep.add_argument("--results", required=True)
    rep.add_argument("--out", required=True)
    rep.add_argument("--shapes", default="1b 8b")
    rep.add_argument("--speed-len", type=int, default=65536)
    rep.add_argument("--gpu-gib", type=float, default=None, help="default: device.txt's")
    rep.add_argument("--host-gib", type=float, default=256.0)
    a = p.parse_args(argv)
    if a.cmd == "data":
        print(make_data(a.tokenizer, a.seq_len, a.rows, a.doc_tokens, a.out))
    elif a.cmd == "record":
        extra = {"context": a.context} if a.context else None
        print(json.dumps(record(a.name, a.rc, a.log, a.run, a.out, extra)))
    elif a.cmd == "record-bare":
        print(json.dumps(record_bare(a.name, a.rc, a.log, a.out, a.context)))
    else:
        data = report(
            Path(a.results), Path(a.out), a.shapes.split(), a.speed_len, a.gpu_gib, a.host_gib
        )
        print(json.dumps({k: data[k] for k in ("dp_speedup", "cp_context_ratio")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
