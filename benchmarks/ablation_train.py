"""From-scratch training of a small Llama on a pipeline output, for the data ablation (issue 15).

    # stage 1: short context, from scratch (rows cut into 2,048-token pieces)
    python -m benchmarks.ablation_train --data out-longctx --out runs/stage1 --shape llama-50m \\
        --tokenizer tok16k --chunk 2048 --tokens 150000000 --lr 1e-3 --seed 0
    # stage 2: continue at 16K, one arm and seed
    python -m benchmarks.ablation_train --data out-baseline --out runs/baseline-s0 \\
        --init runs/stage1/final --attention stream --tokens 40000000 --lr 5e-4 --seed 0

Why this loop and not ``train.launch``: ``train.launch`` loads a pretrained model with Unsloth
and trains LoRA adapters on it, which is what users of the project do. The ablation asks a
different question (does the data teach a model to use far context?), and that needs a model
trained from scratch on nothing but this data: a 50-150M Llama with all weights trained, where
LoRA on a pretrained model would measure the pretraining corpus instead. So this is a plain
torch loop around ``transformers.LlamaForCausalLM`` (built by ``train.random_model`` with the
16K tokenizer of ``train.tokenizer``): fp32 master weights with bf16 autocast, SDPA attention,
AdamW with linear warmup and cosine decay, ``torch.compile`` optional.

The data path is the trainer's own: the train shards listed in the manifest
(``train.data.split_shards``: validation shards never train) and ``train.data.collate_packed``
(what ``PackedCollator`` calls) on every row, so ``--attention per-document`` gives positions
that restart at each ``seq_lengths`` boundary and no loss on a segment's first token (plain
transformers derives the block-diagonal mask from the restarting positions, as
``train.launch --backend transformers`` relies on; ``packed_seq_lengths`` is Unsloth's and is
not passed), and ``--attention stream`` one causal stream per row. Rows of one micro-batch are
collated one by one and stacked along the batch dimension (right-padded, padding unscored): the
same attention as the trainer's flattened row, without one mask over all of them.
``--chunk N`` (stage 1) first cuts each row into N-token pieces, cutting segments at the piece
boundaries as a ``--seq-len N`` pipeline run would window them.

Resumable: a checkpoint (weights, optimizer, data cursor, RNG, log) is written to ``OUT/last``
every ``--checkpoint-seconds`` and before ``--max-seconds`` run out; the same command resumes
from it, and exits 3 while the budget is not spent, 0 once ``OUT/final`` (a ``save_pretrained``
folder with the tokenizer, loadable by ``train.evaluate``) is written. ``OUT/train_log.json``
holds the settings, the device and per-interval loss, learning rate and tokens per second.

``--measure-speed`` times a few steps on random tokens instead (no data), for sizing budgets.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from train.data import (
    ATTENTION_MODES,
    IGNORE_INDEX,
    DataError,
    collate_packed,
    read_manifest,
    split_shards,
)

EXIT_PAUSED = 3
# settings that must match when a run resumes
RESUME_KEYS = (
    "data",
    "shape",
    "init",
    "chunk",
    "seq_len",
    "attention",
    "tokens",
    "batch_tokens",
    "micro_batch_tokens",
    "lr",
    "min_lr_ratio",
    "warmup_steps",
    "weight_decay",
    "seed",
    "attn_impl",
)


class AblationError(ValueError):
    """Unusable arguments; the message names the flag."""


# ---------------------------------------------------------------- data


class Rows:
    """The train rows of a pipeline output (memory-mapped Arrow shards), optionally cut into
    ``chunk``-token pieces; ``get(i)`` gives ``{"input_ids", "seq_lengths"}`` numpy arrays."""

    def __init__(self, data_dir: str, chunk: int | None):
        import pyarrow as pa

        manifest = read_manifest(data_dir)
        entries = split_shards(manifest, "train")
        if not entries:
            raise AblationError(f"--data {data_dir}: the output holds no train shards")
        self.manifest = manifest
        self.tables = []
        for e in entries:
            path = Path(data_dir) / e["path"]
            if path.suffix != ".arrow":
                raise AblationError(f"--data {data_dir}: Arrow shards expected, got {path.name}")
            table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
            self.tables.append(table.select(["input_ids", "seq_lengths"]))
        self.index = []  # (table, row, start, length)
        for t, table in enumerate(self.tables):
            lengths = table.column("input_ids").combine_chunks().value_lengths().to_numpy()
            for r, n in enumerate(lengths):
                n = int(n)
                step = chunk or n
                for s in range(0, n, step):
                    self.index.append((t, r, s, min(step, n - s)))
        self.tokens = sum(x[3] for x in self.index)
        self.longest = max(x[3] for x in self.index)

    def __len__(self) -> int:
        return len(self.index)

    def get(self, i: int) -> dict:
        t, r, start, length = self.index[i]
        table = self.tables[t]
        ids = np.asarray(table.column("input_ids")[r].values.to_numpy(), dtype=np.int64)
        lens = np.asarray(table.column("seq_lengths")[r].values.to_numpy(), dtype=np.int64)
        if start == 0 and length == len(ids):
            return {"input_ids": ids, "seq_lengths": lens}
        return {
            "input_ids": ids[start : start + length],
            "seq_lengths": cut_segments(lens, start, length),
        }


def cut_segments(seq_lengths: np.ndarray, start: int, length: int) -> np.ndarray:
    """The segment lengths of tokens [start, start+length) of a row with ``seq_lengths``."""
    ends = np.cumsum(seq_lengths)
    begins = ends - seq_lengths
    lo = np.maximum(begins, start)
    hi = np.minimum(ends, start + length)
    keep = hi > lo
    return (hi - lo)[keep]


def collate_stack(
    rows: list[dict], *, max_len: int, attention: str, pad_id: int, width: int | None = None
) -> dict:
    """Each row through the trainer's ``collate_packed`` on its own, stacked to (B, T), T =
    ``width`` or the longest row: right padding continues the last segment's positions and is
    never scored."""
    import torch

    parts = [
        collate_packed([r], max_seq_length=max_len, with_packed_lengths=False, attention=attention)
        for r in rows
    ]
    width = max([p["input_ids"].shape[1] for p in parts] + [width or 0])
    ids = torch.full((len(parts), width), pad_id, dtype=torch.long)
    labels = torch.full((len(parts), width), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((len(parts), width), dtype=torch.long)
    for b, p in enumerate(parts):
        n = p["input_ids"].shape[1]
        ids[b, :n] = p["input_ids"][0]
        labels[b, :n] = p["labels"][0]
        pos[b, :n] = p["position_ids"][0]
        if n < width:
            pos[b, n:] = p["position_ids"][0, -1] + 1 + torch.arange(width - n)
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


class Cursor:
    """Seeded epochs over the rows: a fresh permutation per epoch, resumable by (epoch, pos)."""

    def __init__(self, n: int, seed: int, epoch: int = 0, pos: int = 0):
        self.n, self.seed, self.epoch, self.pos = n, seed, epoch, pos
        self.order = self._order()

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self.order = self._order()
            out.append(int(self.order[self.pos]))
            self.pos += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}


# ---------------------------------------------------------------- model and schedule


def lr_at(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then cosine to ``min_ratio * peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def build_model(a: argparse.Namespace, out: Path, device):
    """A fresh ``train.random_model`` shape (seeded), or ``--init``'s weights; fp32 master."""
    import torch
    from transformers import LlamaForCausalLM

    src = a.init
    if not src:
        from train.random_model import build

        src = str(build(a.shape, a.tokenizer, str(out / "init"), seed=a.seed))
    model = LlamaForCausalLM.from_pretrained(
        src, dtype=torch.float32, attn_implementation=a.attn_impl
    )
    model.config.use_cache = False
    return model.to(device), src


def tokenizer_dir(a: argparse.Namespace) -> Path:
    return Path(a.init) if a.init else Path(a.tokenizer)


def make_optimizer(model, a: argparse.Namespace, device):
    import torch

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    groups = [
        {"params": decay, "weight_decay": a.weight_decay},
        {"params": other, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda"
    )


def pick_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def loss_sum(model, batch: dict, device, autocast_dtype):
    """Sum of token losses and the number of scored tokens (shifted labels)."""
    import torch
    import torch.nn.functional as F

    ids = batch["input_ids"].to(device, non_blocking=True)
    pos = batch["position_ids"].to(device, non_blocking=True)
    labels = batch["labels"].to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        # use_cache=False: with a KV cache transformers does not derive the per-document mask
        # from the restarting positions, and every document would attend to the ones before it
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits
    target = labels[:, 1:]
    loss = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        target.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss, int((target != IGNORE_INDEX).sum())


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(out: Path, model, opt, state: dict) -> None:
    import torch

    tmp = out / "last.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    torch.save(model.state_dict(), tmp / "model.pt")
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state) + "\n")
    last = out / "last"
    if last.exists():
        old = out / "last.old"
        if old.exists():
            shutil.rmtree(old)
        last.rename(old)
        tmp.rename(last)
        shutil.rmtree(old)
    else:
        tmp.rename(last)


def write_log(out: Path, log: dict) -> None:
    tmp = out / "train_log.json.tmp"
    tmp.write_text(json.dumps(log, indent=1) + "\n")
    tmp.replace(out / "train_log.json")


def save_final(out: Path, model, tok_dir: Path) -> Path:
    final_tmp = out / "final.tmp"
    if final_tmp.exists():
        shutil.rmtree(final_tmp)
    model.save_pretrained(final_tmp, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tok_dir / name).is_file():
            shutil.copy(tok_dir / name, final_tmp / name)
    final_tmp.rename(out / "final")
    return out / "final"


# ---------------------------------------------------------------- training


def settings_of(a: argparse.Namespace) -> dict:
    return {
        "data": str(Path(a.data).resolve()) if a.data else None,
        "shape": a.shape if not a.init else None,
        "init": str(Path(a.init).resolve()) if a.init else None,
        "chunk": a.chunk,
        "seq_len": a.seq_len,
        "attention": a.attention,
        "tokens": a.tokens,
        "batch_tokens": a.batch_tokens,
        "micro_batch_tokens": a.micro_batch_tokens,
        "lr": a.lr,
        "min_lr_ratio": a.min_lr_ratio,
        "warmup_steps": a.warmup_steps,
        "weight_decay": a.weight_decay,
        "seed": a.seed,
        "compile": a.compile,
        "attn_impl": a.attn_impl,
        "tokenizer": str(tokenizer_dir(a)),
    }


def train(a: argparse.Namespace) -> int:
    import torch

    t0 = time.time()
    out = Path(a.out)
    if (out / "final" / "config.json").is_file():
        print(f"{out}: already finished ({out / 'final'})")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None

    rows = Rows(a.data, a.chunk)
    row_len = a.chunk or a.seq_len
    if rows.longest > row_len:
        raise AblationError(
            f"--data {a.data}: a row of {rows.longest} tokens is longer than --seq-len {row_len}"
        )
    per_micro = max(1, a.micro_batch_tokens // row_len)
    rows_per_step = max(per_micro, (a.batch_tokens // row_len) // per_micro * per_micro)
    step_tokens = rows_per_step * row_len
    total_steps = max(1, math.ceil(a.tokens / step_tokens))
    warmup = min(a.warmup_steps, max(1, total_steps // 10))
    settings = settings_of(a)

    last = out / "last"
    resumed = last.is_dir()
    if resumed:
        state = json.loads((last / "state.json").read_text())
        changed = [k for k in RESUME_KEYS if state["settings"].get(k) != settings.get(k)]
        if changed:
            raise AblationError(
                f"--out {out}: its checkpoint was made with other settings ({', '.join(changed)}); "
                "use another --out or remove it"
            )
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM.from_pretrained(
            state["model_source"], dtype=torch.float32, attn_implementation=a.attn_impl
        )
        model.load_state_dict(torch.load(last / "model.pt", map_location="cpu"))
        model.config.use_cache = False
        model = model.to(device)
        src = state["model_source"]
        log = state["log"]
    else:
        torch.manual_seed(a.seed)
        model, src = build_model(a, out, device)
        state = {"step": 0, "tokens": 0, "cursor": {"epoch": 0, "pos": 0}}
        log = {
            "settings": settings,
            "device": device_name(device),
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_rows": len(rows),
            "train_tokens_per_epoch": rows.tokens,
            "row_len": row_len,
            "rows_per_step": rows_per_step,
            "rows_per_micro_batch": per_micro,
            "total_steps": total_steps,
            "warmup_steps": warmup,
            "calls": [],
            "intervals": [],
        }
    model.train()
    opt = make_optimizer(model, a, device)
    if resumed:
        opt.load_state_dict(torch.load(last / "optimizer.pt", map_location=device))
        torch.set_rng_state(torch.tensor(state["rng"], dtype=torch.uint8))
    cursor = Cursor(len(rows), a.seed, **state["cursor"])
    fwd = torch.compile(model) if a.compile else model
    pad_id = int(model.config.pad_token_id or 0)

    step, tokens = state["step"], state["tokens"]
    call = {"start_step": step, "resumed": resumed, "start": time.time() - t0}
    print(
        f"{out}: {'resuming at' if resumed else 'starting'} step {step}/{total_steps}, "
        f"{rows_per_step} rows of {row_len} a step ({per_micro} per micro-batch), "
        f"{len(rows)} rows, {rows.tokens:,} tokens an epoch, on {device_name(device)}",
        flush=True,
    )
    last_ckpt = time.time()
    interval = {"t": time.time(), "tokens": 0, "loss": 0.0, "n": 0, "steps": 0}
    step_times: list[float] = []
    while step < total_steps:
        t_step = time.time()
        idx = cursor.take(rows_per_step)
        micro = [
            collate_stack(
                [rows.get(i) for i in idx[k : k + per_micro]],
                max_len=row_len,
                attention=a.attention,
                pad_id=pad_id,
                width=row_len,  # one shape for every step (compiled kernels, allocator)
            )
            for k in range(0, len(idx), per_micro)
        ]
        scored = sum(int((m["labels"][:, 1:] != IGNORE_INDEX).sum()) for m in micro)
        lr = lr_at(step, total_steps, a.lr, warmup, a.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        total = torch.zeros((), device=device)
        for m in micro:
            s, _ = loss_sum(fwd, m, device, autocast_dtype)
            (s / scored).backward()
            total += s.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        n_tok = sum(rows.index[i][3] for i in idx)
        tokens += n_tok
        interval["tokens"] += n_tok
        interval["loss"] += total
        interval["n"] += scored
        interval["steps"] += 1
        done = step >= total_steps
        if step % a.log_every == 0 or done or step == 1:
            loss = float(interval["loss"]) / max(1, interval["n"])
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.time() - interval["t"]
            rec = {
                "step": step,
                "tokens": tokens,
                "loss": round(loss, 4),
                "lr": lr,
                "tok_s": round(interval["tokens"] / dt, 1),
                "elapsed_s": round(time.time() - t0, 1),
            }
            log["intervals"].append(rec)
            print(
                f"step {step}/{total_steps} tokens {tokens:,} loss {loss:.4f} lr {lr:.2e} "
                f"{rec['tok_s']:,.0f} tok/s",
                flush=True,
            )
            interval = {"t": time.time(), "tokens": 0, "loss": 0.0, "n": 0, "steps": 0}
        step_times.append(time.time() - t_step)
        if done:
            break
        elapsed = time.time() - t0
        next_step = float(np.median(step_times[-5:]))
        out_of_time = a.max_seconds and elapsed + 2 * next_step + 15 > a.max_seconds
        if out_of_time or time.time() - last_ckpt > a.checkpoint_seconds:
            log["tokens_seen"] = tokens
            state = {
                "settings": settings,
                "model_source": src,
                "step": step,
                "tokens": tokens,
                "cursor": cursor.state(),
                "rng": torch.get_rng_state().tolist(),
                "log": log,
            }
            save_checkpoint(out, model, opt, state)
            write_log(out, log)
            last_ckpt = time.time()
            print(f"checkpoint at step {step} ({out / 'last'})", flush=True)
            if out_of_time:
                call.update(end_step=step, wall_s=round(time.time() - t0, 1))
                log["calls"].append(call)
                state["log"] = log
                (out / "last" / "state.json").write_text(json.dumps(state) + "\n")
                write_log(out, log)
                print(f"paused at step {step}/{total_steps}: run the same command to resume")
                return EXIT_PAUSED
    call.update(end_step=step, wall_s=round(time.time() - t0, 1))
    log["calls"].append(call)
    log["tokens_seen"] = tokens
    log["finished"] = True
    log["train_seconds"] = round(sum(c["wall_s"] for c in log["calls"]), 1)
    log["final_loss"] = log["intervals"][-1]["loss"] if log["intervals"] else None
    final = save_final(out, model, tokenizer_dir(a))
    write_log(out, log)
    if last.exists():
        shutil.rmtree(last)
    print(f"finished: {tokens:,} tokens in {step} steps; {final}")
    return 0


# ---------------------------------------------------------------- speed probe


def measure_speed(a: argparse.Namespace) -> int:
    """Tokens per second of fwd+bwd+step on random tokens, for each ``LEN:ATTENTION:ROWS[:IMPL]``
    of ``--measure-speed``: rows of LEN tokens, each holding documents of 64..LEN/2 tokens (so
    the per-document mask is always there); IMPL sdpa (default) or flex_attention, whose
    logits on one batch are also compared with sdpa's (``max_abs_diff``)."""
    import torch

    device = pick_device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    torch.manual_seed(a.seed)
    model, _ = build_model(a, Path(a.out), device)
    model.train()
    opt = make_optimizer(model, a, device)
    rng = np.random.default_rng(a.seed)
    vocab = model.config.vocab_size
    results = []

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for spec in a.measure_speed.split(","):
        length, attention, n_rows, *rest = spec.split(":")
        length, n_rows, impl = int(length), int(n_rows), (rest[0] if rest else "sdpa")
        model.set_attn_implementation(impl)
        fwd = torch.compile(model) if a.compile else model

        def batch(length=length, attention=attention, n_rows=n_rows, rows=None):
            if rows is None:
                rows = []
                for _ in range(n_rows):
                    lens = []
                    while sum(lens) < length:
                        lens.append(int(min(length - sum(lens), rng.integers(64, length // 2 + 1))))
                    ids = rng.integers(3, vocab, size=length)
                    rows.append({"input_ids": ids, "seq_lengths": np.array(lens)})
            return collate_stack(rows, max_len=length, attention=attention, pad_id=0), rows

        rec = {"seq_len": length, "attention": attention, "rows": n_rows, "attn_impl": impl}
        try:
            times = []
            for i in range(a.speed_steps + 2):
                b, _ = batch()
                sync()
                t = time.time()
                loss, n = loss_sum(fwd, b, device, autocast_dtype)
                (loss / n).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                sync()
                if i == 0:
                    rec["first_step_s"] = round(time.time() - t, 2)
                if i >= 2:
                    times.append(time.time() - t)
            sec = float(np.median(times))
            rec.update(step_s=round(sec, 4), tok_s=round(length * n_rows / sec, 1))
            if impl != "sdpa":
                # the same rows: this kernel vs sdpa, and sdpa per-document vs stream (the size
                # of the error that a kernel ignoring the document boundaries would make)
                b, rows = batch()
                b_stream, _ = batch(attention="stream", rows=rows)

                def logits(m, bb):
                    with torch.autocast(
                        device.type, dtype=autocast_dtype, enabled=bool(autocast_dtype)
                    ):
                        return m(
                            input_ids=bb["input_ids"].to(device),
                            position_ids=bb["position_ids"].to(device),
                            use_cache=False,
                        ).logits.float()

                with torch.no_grad():
                    got = logits(model, b)
                    model.set_attn_implementation("sdpa")
                    ref = logits(model, b)
                    rec["logit_diff_vs_sdpa"] = round(float((got - ref).abs().mean()), 6)
                    del got
                    rec["logit_diff_stream"] = round(
                        float((logits(model, b_stream) - ref).abs().mean()), 6
                    )
                    del ref
                    model.set_attn_implementation(impl)
        except Exception as err:  # a kernel that does not run here is a result, not a crash
            rec["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        if device.type == "cuda":
            rec["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            torch.cuda.reset_peak_memory_stats()
        results.append(rec)
        print(json.dumps(rec), flush=True)
    summary = {
        "device": device_name(device),
        "shape": a.shape,
        "parameters": sum(p.numel() for p in model.parameters()),
        "compile": a.compile,
        "results": results,
    }
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "speed.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.ablation_train", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data", help="a finished pipeline output (its train shards are read)")
    p.add_argument("--out", required=True, help="run folder: last/, final/, train_log.json")
    p.add_argument("--shape", default="llama-50m", help="train.random_model shape (from scratch)")
    p.add_argument("--tokenizer", help="folder with tokenizer.json (from scratch)")
    p.add_argument("--init", help="continue from this model folder (a stage-1 OUT/final)")
    p.add_argument("--seq-len", type=int, default=16384, help="longest row, tokens")
    p.add_argument("--chunk", type=int, default=None, help="cut rows into pieces of N tokens")
    p.add_argument("--attention", choices=ATTENTION_MODES, default="per-document")
    p.add_argument("--tokens", type=int, help="token budget (steps = tokens / batch tokens)")
    p.add_argument("--batch-tokens", type=int, default=262144, help="tokens per optimizer step")
    p.add_argument("--micro-batch-tokens", type=int, default=65536, help="tokens per fwd/bwd")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=50, help="at most a tenth of the steps")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="initialisation and data order")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument(
        "--attn-impl",
        choices=("sdpa", "flex_attention"),
        default="sdpa",
        help="transformers attention: sdpa, or flex_attention (skips the blocks that the "
        "per-document mask removes; compiled at the first step)",
    )
    p.add_argument("--max-seconds", type=float, default=0, help="checkpoint and exit 3 before")
    p.add_argument("--checkpoint-seconds", type=float, default=120)
    p.add_argument("--log-every", type=int, default=10, help="steps per log interval")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--measure-speed", help="LEN:ATTENTION:ROWS,... on random tokens; no training")
    p.add_argument("--speed-steps", type=int, default=5)
    a = p.parse_args(argv)
    if a.measure_speed:
        if not a.tokenizer:
            p.error("--measure-speed needs --tokenizer")
        return a
    if not a.data:
        p.error("--data is required")
    if not a.tokens or a.tokens <= 0:
        p.error("--tokens must be a positive token budget")
    if not a.init and not a.tokenizer:
        p.error("from scratch needs --tokenizer (or --init to continue)")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        return measure_speed(a) if a.measure_speed else train(a)
    except (AblationError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
