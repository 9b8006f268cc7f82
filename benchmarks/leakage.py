"""Cross-document leakage check on a GPU: each document's loss inside a packed row vs alone.

    python benchmarks/leakage.py --data OUT --model MODEL_DIR [--max-tokens 16384]

Loads the model the way ``train.launch`` does (Unsloth, LoRA with non-zero B so the adapters
matter), takes the pipeline sample with the most segments, keeps its first segments up to
``--max-tokens``, and compares per-document mean loss (first token of each document excluded)
computed (a) inside the packed row with ``position_ids`` restarting and ``packed_seq_lengths``,
(b) for each document alone, (c) inside the row as one causal stream. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("UNSLOTH_RETURN_LOGITS", "1")
os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--max-tokens", type=int, default=16384)
    p.add_argument("--json-out")
    a = p.parse_args(argv)
    import torch
    import unsloth  # noqa: F401
    from unsloth import FastLanguageModel

    from train.data import collate_packed, load_shards, read_manifest

    manifest = read_manifest(a.data)
    ds = load_shards(a.data, manifest)
    # Real documents from the samples, re-packed into one row of at most --max-tokens.
    ids, lens, keep = [], [], 0
    for r in range(len(ds)):
        row, start = ds[r], 0
        for n in row["seq_lengths"]:
            if n <= a.max_tokens // 2 and keep + n <= a.max_tokens and len(lens) < 8:
                ids.extend(row["input_ids"][start : start + n])
                lens.append(n)
                keep += n
            start += n
    if len(lens) < 2:
        raise SystemExit("no sample with two documents fitting --max-tokens; raise it")
    row = {"input_ids": ids, "seq_lengths": lens}
    model, _ = FastLanguageModel.from_pretrained(
        a.model, max_seq_length=manifest["seq_len"], dtype=None
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=16,
        lora_alpha=16,
        use_gradient_checkpointing="unsloth",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    torch.manual_seed(0)
    for name, prm in model.named_parameters():
        if "lora_B" in name:
            prm.data.normal_(0, 0.02)
    model.eval()

    def doc_losses(batch, segs):
        with torch.no_grad():
            kw = {k: v.cuda() for k, v in batch.items() if k != "labels"}
            logits = model(**kw).logits.float()[0]
        ids = batch["input_ids"][0].cuda()
        lp = torch.log_softmax(logits[:-1], -1).gather(1, ids[1:, None])[:, 0]
        out, start = [], 0
        for n in segs:
            out.append(float(-lp[start : start + n - 1].mean()))  # predictions of tokens 1..n-1
            start += n
        return out

    packed = doc_losses(collate_packed([row], max_seq_length=keep), lens)
    stream_batch = collate_packed(
        [{"input_ids": row["input_ids"], "seq_lengths": [keep]}], max_seq_length=keep
    )
    stream_batch["position_ids"] = torch.arange(keep)[None]
    stream_batch["packed_seq_lengths"] = torch.tensor([keep], dtype=torch.int32)
    start, alone = 0, []
    for n in lens:
        one = {"input_ids": row["input_ids"][start : start + n], "seq_lengths": [n]}
        alone += doc_losses(collate_packed([one], max_seq_length=n), [n])
        start += n
    # one causal stream: per-document losses read off the same positions
    with torch.no_grad():
        logits = model(
            input_ids=stream_batch["input_ids"].cuda(),
            position_ids=stream_batch["position_ids"].cuda(),
        ).logits.float()[0]
    ids = stream_batch["input_ids"][0].cuda()
    lp = torch.log_softmax(logits[:-1], -1).gather(1, ids[1:, None])[:, 0]
    stream, start = [], 0
    for n in lens:
        stream.append(float(-lp[start : start + n - 1].mean()))
        start += n
    print(f"row of {keep} tokens, {len(lens)} documents, lengths {lens}")
    print("| doc | tokens | loss alone | loss packed | |diff| | loss one stream | |diff| |")
    print("|---|---|---|---|---|---|---|")
    for i, n in enumerate(lens):
        print(
            f"| {i} | {n} | {alone[i]:.4f} | {packed[i]:.4f} | {abs(packed[i] - alone[i]):.2e} | "
            f"{stream[i]:.4f} | {abs(stream[i] - alone[i]):.2e} |"
        )
    res = {
        "lengths": lens,
        "alone": alone,
        "packed": packed,
        "stream": stream,
        "max_packed_diff": max(abs(x - y) for x, y in zip(packed, alone, strict=True)),
        "max_stream_diff": max(abs(x - y) for x, y in zip(stream, alone, strict=True)),
    }
    print(json.dumps({k: res[k] for k in ("max_packed_diff", "max_stream_diff")}))
    if a.json_out:
        with open(a.json_out, "w") as fh:
            json.dump(res, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
