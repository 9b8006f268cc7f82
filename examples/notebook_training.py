"""Train on a pipeline output from your own notebook or script, without train.launch.

    python examples/notebook_training.py OUT MODEL_DIR [--steps 2]

The shards are ordinary Arrow files: load them with ``Dataset.from_file`` (memory-mapped, no
copy into the datasets cache), and let ``train.data.PackedCollator`` turn each packed row into
one padding-free sequence whose positions restart at every document, with the tokens that
``--overlap`` repeats given no label. Two things matter and are easy to miss:

- ``model.config.use_cache = False``: transformers only builds the per-document attention from
  restarting positions when the cache is off; with it on, documents see each other.
- ``remove_unused_columns=False``: the collator needs ``seq_lengths`` (and ``context_tokens``).

With TRL, the same collator and dataset go to ``SFTTrainer(model=..., train_dataset=ds,
data_collator=collator, args=SFTConfig(remove_unused_columns=False,
dataset_kwargs={"skip_prepare_dataset": True}, ...))``; ``train.launch`` adds Unsloth, RoPE
scaling and the memory plan on top. This file is run by tests/test_examples.py on CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from train.data import PackedCollator


def train_on(out: str, model_dir: str, steps: int = 2, output_dir: str = "runs/notebook") -> dict:
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    shards = [Path(out) / s["path"] for s in manifest["shards"] if s.get("split") != "validation"]
    ds = datasets.concatenate_datasets([datasets.Dataset.from_file(str(p)) for p in shards])
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.config.use_cache = False  # per-document attention from restarting positions
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=1,
        learning_rate=1e-3,
        remove_unused_columns=False,  # the collator reads seq_lengths / context_tokens
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
    )
    collator = PackedCollator(max_seq_length=int(manifest["seq_len"]))
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collator)
    result = trainer.train()
    return {"steps": result.global_step, "loss": result.training_loss}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--output-dir", default="runs/notebook")
    a = ap.parse_args()
    print(json.dumps(train_on(a.out, a.model, a.steps, a.output_dir)))
