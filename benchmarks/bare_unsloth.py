"""GPU: bare Unsloth on the same rows the launcher trains on; padding-free vs one causal stream.

    python benchmarks/bare_unsloth.py --data OUT --model DIR --steps 6 [--load-in-4bit] \\
        [--lora-r 16] [--tiled-mlp] [--modes packed,stream]

Loads the model the way GPU-NOTES' bare-Unsloth probe did (``FastLanguageModel``, LoRA on all
projections, ``use_gradient_checkpointing="unsloth"``) and runs a plain loop (AdamW on the
adapters, batch 1) over the first rows of the pipeline's shards at ``max_seq_length`` = the
manifest's ``seq_len``. Modes:

- ``packed``: the launcher's padding-free rows (positions restart per document, first token of
  each document unlabelled, ``packed_seq_lengths``): no attention across documents;
- ``stream``: the same tokens as one causal stream (no restart, no lengths).

Prints one JSON line per mode: tokens/s after the first step, each step's seconds (the first
from the start of the mode: compilation included, as the launcher's one-step runtime), peak
allocated GPU memory, the process's peak host RSS, losses. ``--tiled-mlp`` loads with Unsloth's
tiled MLP (``unsloth_tiled_mlp=True``), as the launcher's ``--preset max-context``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--load-in-4bit", action="store_true")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--modes", default="packed")
    ap.add_argument("--tiled-mlp", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    import torch
    import unsloth  # noqa: F401
    from unsloth import FastLanguageModel

    from train.data import collate_packed, load_shards, read_manifest

    manifest = read_manifest(args.data)
    L = int(manifest["seq_len"])
    rows = load_shards(args.data, manifest)
    model, _ = FastLanguageModel.from_pretrained(
        model_name=args.model,
        max_seq_length=L,
        load_in_4bit=args.load_in_4bit,
        dtype=None,
        unsloth_tiled_mlp=args.tiled_mlp,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=args.lora_r,
        lora_alpha=args.lora_r,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        use_gradient_checkpointing="unsloth",
        max_seq_length=L,
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    for mode in args.modes.split(","):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        start = time.time()
        marks, losses, n_tokens = [], [], []
        for step in range(args.steps):
            batch = collate_packed([rows[step % len(rows)]], max_seq_length=L)
            if mode == "stream":
                n = batch["input_ids"].shape[1]
                batch = {
                    "input_ids": batch["input_ids"],
                    "labels": batch["input_ids"].clone(),
                    "position_ids": torch.arange(n)[None],
                }
            batch = {k: v.cuda() for k, v in batch.items()}
            out = model(**batch)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            marks.append(time.time())
            losses.append(round(float(out.loss), 4))
            n_tokens.append(int(batch["input_ids"].shape[1]))
        steady = sum(n_tokens[1:]) / (marks[-1] - marks[0]) if len(marks) > 1 else None
        docs_per_row = [len(rows[i % len(rows)]["seq_lengths"]) for i in range(args.steps)]
        print(
            "result",
            json.dumps(
                {
                    "mode": mode,
                    "max_seq_length": L,
                    "load_in_4bit": args.load_in_4bit,
                    "steps": args.steps,
                    "tokens_per_s_steady": round(steady, 1) if steady else None,
                    "step_s": [
                        round(b - a, 2) for a, b in zip([start, *marks[:-1]], marks, strict=True)
                    ],
                    "tiled_mlp": args.tiled_mlp,
                    "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                    "host_peak_rss_gib": round(
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2
                    ),
                    "losses": losses,
                    "documents_per_row": docs_per_row,
                    "device": torch.cuda.get_device_name(),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
