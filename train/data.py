"""The shards as training rows: memory-mapped with ``datasets``, collated padding-free.

A shard row is already a packed sample; nothing is re-packed or truncated here. The collator
flattens the rows of a micro-batch into one row (the padding-free / varlen convention of TRL and
Unsloth) and builds, per segment of ``seq_lengths``::

    input_ids     [ a0 a1 a2 | b0 b1 | c0 c1 c2 c3 ]
    position_ids  [  0  1  2 |  0  1 |  0  1  2  3 ]    restart at every boundary
    labels        [ -100 a1 a2 | -100 b1 | -100 c1 c2 c3 ]   a segment's first token is not
                                                     predicted from the previous document
    packed_seq_lengths = [3, 2, 4]   (int32; Unsloth's kernels keep attention inside segments)

Plain transformers (SDPA/eager) derives the same block-diagonal mask from ``position_ids``
when no attention mask is given; Unsloth is given the lengths explicitly (GPU-NOTES.md: with
lengths inferred from positions one document's loss moved by 6e-3).

``attention="stream"`` (for ablations: the naive concatenate-and-chunk baseline) makes each row
one causal stream instead, so a document attends to the documents before it in its row::

    input_ids     [ a0 a1 a2 b0 b1 c0 c1 c2 c3 ]
    position_ids  [  0  1  2  3  4  5  6  7  8 ]
    labels        [ -100 a1 a2 b0 b1 c0 c1 c2 c3 ]   b0 is predicted from a0..a2
    packed_seq_lengths = [9]

Rows of one micro-batch stay apart in both modes (each row is its own segment or stream).

``context_tokens`` (a shard column since the pipeline's ``--overlap K``; optional, older outputs
lack it): per segment, its first tokens that repeat the previous window of the same document.
They are context only and get no label, so every token of a document is learned once::

    a window of 6 after an overlap of 2:   input_ids [ x4 x5 | x6 x7 x8 x9 ]   context_tokens [2]
                                           labels    [ -100 -100 x6 x7 x8 x9 ]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from schemas.layout import MANIFEST, split_of

IGNORE_INDEX = -100
CONTEXT = "context_tokens"  # per segment: leading tokens that only give context (--overlap)
# "per-document": attention and positions restart at every seq_lengths boundary (the default);
# "stream": one causal stream per row, attention across the documents packed in it (ablations)
ATTENTION_MODES = ("per-document", "stream")


class DataError(ValueError):
    """The output folder cannot be trained on as configured; the message says what to change."""


def read_manifest(data_dir: str, flag: str = "--data") -> dict:
    path = Path(data_dir) / MANIFEST
    if not Path(data_dir).is_dir():
        raise DataError(f"{flag} {data_dir}: no such folder (a pipeline output's folder)")
    if not path.is_file():
        raise DataError(
            f"{flag} {data_dir}: no manifest.json: not a finished pipeline output "
            "(run python -m pipeline.run, and let it finish)"
        )
    return json.loads(path.read_text())


def shard_split(entry: dict) -> str:
    """A manifest shard entry's split: its ``"split"`` field; for an entry without one (an
    output made before the pipeline had ``--eval-fraction``), "validation" for a file named
    ``validation-*`` and "train" for anything else (``schemas.layout.split_of``)."""
    return split_of(entry)


def split_shards(manifest: dict, split: str) -> list[dict]:
    """The manifest's shard entries (``path``, ``rows``, ``tokens``...) of one split, in order."""
    return [s for s in manifest["shards"] if shard_split(s) == split]


def load_shards(data_dir: str, manifest: dict, split: str = "train"):
    """The shards of one split as one ``datasets.Dataset``; Arrow shards are memory-mapped, not
    copied. Training reads "train" only: validation shards never train."""
    import datasets

    paths = [str(Path(data_dir) / s["path"]) for s in split_shards(manifest, split)]
    if not paths:
        raise DataError(f"{data_dir}: the output holds no {split} samples")
    if paths[0].endswith(".parquet"):
        ds = datasets.load_dataset("parquet", data_files=paths, split="train")
    else:
        ds = datasets.concatenate_datasets([datasets.Dataset.from_file(p) for p in paths])
    columns = ["input_ids", "seq_lengths"]
    return ds.select_columns(columns + [CONTEXT] if CONTEXT in ds.column_names else columns)


def _checked_rows(rows: list[dict], max_seq_length: int) -> tuple[list, list, list]:
    """``input_ids``, ``seq_lengths`` and ``context_tokens`` (zeros without the column) of each
    row as int64 arrays, checked: nothing truncated, segments that cover the row."""
    ids = [np.asarray(r["input_ids"], dtype=np.int64) for r in rows]
    lens = [np.asarray(r["seq_lengths"], dtype=np.int64) for r in rows]
    ctx = [
        np.zeros(len(n), dtype=np.int64)
        if r.get(CONTEXT) is None
        else np.asarray(r[CONTEXT], dtype=np.int64)
        for r, n in zip(rows, lens, strict=True)
    ]
    for i, (t, n, c) in enumerate(zip(ids, lens, ctx, strict=True)):
        if len(t) > max_seq_length:
            raise DataError(
                f"a row of {len(t)} tokens exceeds max_seq_length {max_seq_length}: "
                "it would be truncated; raise --max-seq-length or re-run the pipeline"
            )
        if int(n.sum()) != len(t) or (n <= 0).any():
            raise DataError(f"row {i}: seq_lengths sum to {int(n.sum())}, input_ids has {len(t)}")
        if len(c) != len(n) or (c < 0).any() or (c > n).any():
            raise DataError(f"row {i}: context_tokens {c.tolist()} do not fit seq_lengths")
    return ids, lens, ctx


def collate_packed(
    rows: list[dict],
    *,
    max_seq_length: int,
    with_packed_lengths: bool = True,
    attention: str = "per-document",
) -> dict:
    """Rows of ``input_ids``/``seq_lengths`` (and ``context_tokens``, if the shards have it) ->
    one padding-free row of torch tensors; with ``attention="stream"`` each row is one segment
    (see the module docstring). Context-only tokens get no label in both modes."""
    import torch

    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention={attention!r}: expected one of {', '.join(ATTENTION_MODES)}")
    ids, lens, ctx = _checked_rows(rows, max_seq_length)
    input_ids = np.concatenate(ids)
    if attention == "stream":
        seg = np.array([len(t) for t in ids], dtype=np.int64)
    else:
        seg = np.concatenate(lens)
    starts = np.r_[0, np.cumsum(seg)[:-1]]
    position_ids = np.arange(len(input_ids)) - np.repeat(starts, seg)
    labels = input_ids.copy()
    labels[starts] = IGNORE_INDEX
    doc_lens, doc_ctx = np.concatenate(lens), np.concatenate(ctx)
    doc_starts = np.r_[0, np.cumsum(doc_lens)[:-1]]
    offset = np.arange(len(input_ids)) - np.repeat(doc_starts, doc_lens)
    labels[offset < np.repeat(doc_ctx, doc_lens)] = IGNORE_INDEX
    batch = {
        "input_ids": torch.from_numpy(input_ids)[None],
        "labels": torch.from_numpy(labels)[None],
        "position_ids": torch.from_numpy(position_ids)[None],
    }
    if with_packed_lengths:
        batch["packed_seq_lengths"] = torch.from_numpy(seg.astype(np.int32))
    return batch


class PackedCollator:
    """``data_collator`` for TRL's SFTTrainer: see :func:`collate_packed`."""

    def __init__(
        self,
        max_seq_length: int,
        with_packed_lengths: bool = True,
        attention: str = "per-document",
    ):
        if attention not in ATTENTION_MODES:
            raise ValueError(
                f"attention={attention!r}: expected one of {', '.join(ATTENTION_MODES)}"
            )
        self.max_seq_length = max_seq_length
        self.with_packed_lengths = with_packed_lengths
        self.attention = attention

    def __call__(self, rows: list[dict]) -> dict:
        return collate_packed(
            rows,
            max_seq_length=self.max_seq_length,
            with_packed_lengths=self.with_packed_lengths,
            attention=self.attention,
        )
