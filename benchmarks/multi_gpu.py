"""Helpers of ``benchmarks/multi_gpu.sh`` (the 2-GPU measurements of issue 21).

    python benchmarks/multi_gpu.py data --tokenizer DIR --seq-len L --rows N --out DIR
    python benchmarks/multi_gpu.py estimate --model DIR --mode unsloth1|cp2 --gpu-gib G
    python benchmarks/multi_gpu.py next --results DIR --prefix probe-1b-cp2 --start L
    python benchmarks/multi_gpu.py record --name NAME --rc RC --log LOG --run DIR --out JSON
    python benchmarks/multi_gpu.py report --results DIR --out benchmarks/results/multi_gpu.json

``data`` writes a pipeline-shaped output folder (manifest.json, documents.arrow, one train shard)
whose rows are exactly ``--seq-len`` tokens, each packed from documents of ``--doc-tokens``
random token ids ending with the tokenizer's end-of-text: memory and speed depend on the shape
and the row layout, not on the text (GPU-NOTES.md), and no pipeline (no Apache Beam) runs on the
GPU machine. ``next`` chooses the next context of a largest-context search from the probes
recorded so far; ``record`` turns one finished ``train.launch`` run into a result file; ``report``
writes the summary JSON from the recorded results only (a figure that was not measured is null).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GRID = 32768  # contexts of the largest-context searches are multiples of this
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
# the planner's estimate, where a search starts


def estimate(model: str, mode: str, gpu_gib: float, load_in_4bit: bool = False) -> int:
    """The planner's largest context (train/plan.py) for one GPU through Unsloth (``unsloth1``)
    or two GPUs with context parallelism (``cp2``), bf16 LoRA r16 unless ``load_in_4bit``, and
    no more than the host RAM holds for offloaded checkpoints."""
    from train.plan import (
        HOST_HEADROOM_BYTES,
        host_memory_bytes,
        max_context,
        max_cp_context,
        read_model_shape,
    )

    shape = read_model_shape(model)
    sizes = dict(lora_r=16, modules=DEFAULT_MODULES, gc="unsloth")
    if mode == "cp2":
        fits = max_cp_context(shape, gpu_gib, 2, **sizes)
    else:
        fits = max_context(shape, gpu_gib, load_in_4bit=load_in_4bit, **sizes)
    host = host_memory_bytes()
    if host:
        per_token = shape.num_hidden_layers * shape.hidden_size * 2
        fits = min(fits, (host - HOST_HEADROOM_BYTES) // per_token)
    return int(fits)


# ---------------------------------------------------------------------------------------------
# the largest-context search


def probes(results: Path, prefix: str) -> dict[int, dict]:
    """``{context: result}`` of the recorded probes ``<prefix>-<context>.json``."""
    found = {}
    for p in results.glob(f"{prefix}-*.json"):
        m = re.fullmatch(re.escape(prefix) + r"-(\d+)\.json", p.name)
        if m:
            found[int(m.group(1))] = json.loads(p.read_text())
    return found


def _grid(x: float, step: int, up: bool = False) -> int:
    return int((math.ceil if up else math.floor)(x / step) * step)


def next_probe(
    results: Path,
    prefix: str,
    start: int,
    *,
    step: int = GRID,
    lowest: int = GRID,
    highest: int = 4 * 2**20,
    max_probes: int = 5,
) -> int | None:
    """The next context to try, or None when the search is over: start at the planner's
    estimate (on the grid); go up 25% after a fit, down 20% after a failure, then bisect the
    bracket [largest fit, smallest failure] until the two are one grid step apart. A probe
    that timed out or failed for another reason than memory ends the search (it says why)."""
    done = probes(results, prefix)
    if not done:
        return max(lowest, min(highest, _grid(start, step)))
    if len(done) >= max_probes or any(r["status"] in ("timeout", "error") for r in done.values()):
        return None
    fits = [L for L, r in done.items() if r["status"] == "fit"]
    fails = [L for L, r in done.items() if r["status"] != "fit"]
    best, worst = (max(fits) if fits else None), (min(fails) if fails else None)
    if best is None:
        nxt = _grid(worst * 0.8, step)
        return nxt if nxt >= lowest and nxt not in done else None
    if worst is None:
        nxt = _grid(best * 1.25, step, up=True)
        return nxt if nxt <= highest and nxt not in done else None
    if worst - best <= step:
        return None
    nxt = _grid((best + worst) / 2, step)
    return nxt if nxt not in done and best < nxt < worst else None


def search_result(results: Path, prefix: str) -> dict:
    done = probes(results, prefix)
    fits = sorted(L for L, r in done.items() if r["status"] == "fit")
    fails = sorted(L for L, r in done.items() if r["status"] != "fit")
    best = fits[-1] if fits else None
    return {
        "largest_that_ran": best,
        "smallest_that_failed": fails[0] if fails else None,
        "peak_gib_at_largest": done[best].get("peak_gib") if best else None,
        "probes": {str(L): done[L] for L in sorted(done)},
    }


# ---------------------------------------------------------------------------------------------
# one run -> one result file


OOM = re.compile(r"OutOfMemoryError|CUDA out of memory|out of memory", re.IGNORECASE)


def record(name: str, rc: int, log: str, run: str, out: str, extra: dict | None = None) -> dict:
    """The result of one ``train.launch`` run: fit (exit 0 and a summary), oom, refused (exit
    2: the plan refused it, the message kept), timeout (exit 124) or error."""
    text = Path(log).read_text(errors="replace") if Path(log).is_file() else ""
    summary_path = Path(run) / "train_summary.json"
    result: dict = {"name": name, "rc": rc, "recorded": time.strftime("%Y-%m-%d %H:%M:%S")}
    if rc == 0 and summary_path.is_file():
        s = json.loads(summary_path.read_text())
        keys = (
            "max_seq_length",
            "steps",
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
            "first_loss",
            "last_loss",
            "device",
        )
        result.update(status="fit", **{k: s.get(k) for k in keys})
    elif rc == 124:
        result["status"] = "timeout"
    elif OOM.search(text):
        result["status"] = "oom"
    elif rc == 2:
        result.update(
            status="refused", message=[ln for ln in text.splitlines() if "error" in ln][-1:]
        )
    else:
        result.update(status="error", tail=text.splitlines()[-15:])
    result.update(extra or {})
    Path(out).write_text(json.dumps(result, indent=1))
    return result


# ---------------------------------------------------------------------------------------------
# the report


def _load(results: Path, name: str) -> dict | None:
    p = results / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _steady(r: dict | None):
    return (r or {}).get("tokens_per_s_steady") if (r or {}).get("status") == "fit" else None


def report(results: Path, out: Path, shapes: list[str], speed_len: int) -> dict:
    """benchmarks/results/multi_gpu.json from the recorded results; what was not measured is
    null. ``cp_context_ratio``: per shape, the largest context that ran over 2 GPUs with
    --context-parallel 2 / the largest that ran on 1 GPU through Unsloth (bf16 LoRA r16, both
    with offloaded checkpoints). ``dp_speedup``: steady tokens/s of the 8B QLoRA shape with
    --nproc-per-node 2 / with one GPU."""
    figures, ratios = {}, {}
    for shape in shapes:
        one = search_result(results, f"probe-{shape}-unsloth1")
        two = search_result(results, f"probe-{shape}-cp2")
        speeds = {m: _load(results, f"speed-{shape}-{m}-{speed_len}") for m in ("unsloth1", "cp2")}
        figures[shape] = {
            "max_context_1gpu_unsloth": one,
            "max_context_2gpu_context_parallel": two,
            "planner_estimate": (_load(results, f"estimate-{shape}") or {}),
            f"tokens_per_s_at_{speed_len}": {
                "1gpu_unsloth": _steady(speeds["unsloth1"]),
                "2gpu_context_parallel": _steady(speeds["cp2"]),
            },
            f"peak_gib_at_{speed_len}": {m: (r or {}).get("peak_gib") for m, r in speeds.items()},
        }
        a, b = one["largest_that_ran"], two["largest_that_ran"]
        ratios[shape] = round(b / a, 3) if a and b else None
    ddp = {n: _load(results, f"ddp-8b-qlora-{n}") for n in (1, 2)}
    t1, t2 = _steady(ddp[1]), _steady(ddp[2])
    device = (
        (results / "device.txt").read_text().strip() if (results / "device.txt").is_file() else None
    )
    data = {
        "issue": 21,
        "device": device,
        "date": time.strftime("%Y-%m-%d"),
        "commit": os.environ.get("MULTI_GPU_COMMIT") or None,
        "dp_speedup": round(t2 / t1, 3) if t1 and t2 else None,
        "dp_tokens_per_s": {"1gpu": t1, "2gpu": t2, "shape": "8b", "context": speed_len},
        "cp_context_ratio": ratios,
        "shapes": figures,
        "definitions": {
            "cp_context_ratio": "per shape: the largest context that ran over 2 GPUs with "
            "--context-parallel 2 / the largest that ran on 1 GPU through Unsloth (bf16 LoRA r16, "
            "offloaded checkpoints in both)",
            "dp_speedup": "steady tokens/s (after the first step) of the Llama-3.1-8B shape, 4-bit "
            f"QLoRA r32, at {speed_len} tokens: --nproc-per-node 2 over one GPU",
            "largest_that_ran": "the longest row (tokens) of which one optimizer step finished; "
            "the search probes contexts on a 32,768-token grid from the planner's estimate",
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
    e = sub.add_parser("estimate")
    e.add_argument("--model", required=True)
    e.add_argument("--mode", choices=("unsloth1", "cp2"), required=True)
    e.add_argument("--gpu-gib", type=float, required=True)
    n = sub.add_parser("next")
    n.add_argument("--results", required=True)
    n.add_argument("--prefix", required=True)
    n.add_argument("--start", type=int, required=True)
    n.add_argument("--step", type=int, default=GRID)
    n.add_argument("--highest", type=int, default=4 * 2**20)
    n.add_argument("--max-probes", type=int, default=5)
    r = sub.add_parser("record")
    r.add_argument("--name", required=True)
    r.add_argument("--rc", type=int, required=True)
    r.add_argument("--log", required=True)
    r.add_argument("--run", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--context", type=int, default=None)
    rep = sub.add_parser("report")
    rep.add_argument("--results", required=True)
    rep.add_argument("--out", required=True)
    rep.add_argument("--shapes", default="1b 8b")
    rep.add_argument("--speed-len", type=int, default=65536)
    a = p.parse_args(argv)
    if a.cmd == "data":
        print(make_data(a.tokenizer, a.seq_len, a.rows, a.doc_tokens, a.out))
    elif a.cmd == "estimate":
        print(estimate(a.model, a.mode, a.gpu_gib))
    elif a.cmd == "next":
        nxt = next_probe(
            Path(a.results),
            a.prefix,
            a.start,
            step=a.step,
            lowest=a.step,
            highest=a.highest,
            max_probes=a.max_probes,
        )
        print("done" if nxt is None else nxt)
    elif a.cmd == "record":
        extra = {"context": a.context} if a.context else None
        print(json.dumps(record(a.name, a.rc, a.log, a.run, a.out, extra)))
    else:
        data = report(Path(a.results), Path(a.out), a.shapes.split(), a.speed_len)
        print(json.dumps({k: data[k] for k in ("dp_speedup", "cp_context_ratio")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
