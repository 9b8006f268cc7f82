"""Invariants of an output folder (docs/contracts.md sections 2-3), checked from the files alone.

Used by ``python -m pipeline.validate`` and by the training launcher before it loads a model.

Checks: manifest present and complete; each shard's sha256, rows and tokens as listed; shard
schema; every row 1 <= len(input_ids) <= seq_len with sum(seq_lengths) == len(input_ids) and
parallel segment lists; documents.arrow ids unique; every document's segments cover
[0, n_tokens) with no gap, consecutive windows share exactly ``overlap`` tokens (and those
tokens are equal), a document with n_tokens <= seq_len is exactly one segment, every segment
comes from a listed document, every document ends with the end-of-text token (and starts with
the tokenizer's BOS when it adds one); no document is
in both the train and the validation split, and the manifest's ``validation_doc_ids`` are the
documents of the validation shards; manifest counts and fill_rate match the shards; a dataset
with 0 documents or 0 samples fails. Memory: one shard at a time plus a few integers per segment.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict

import numpy as np

from schemas.columns import SAMPLE_SCHEMA
from schemas.layout import DOCUMENTS, MANIFEST, VALIDATION, split_of
from schemas.storage import exists, join, read_bytes, read_table, table_from_bytes

# Shard columns an output made by an earlier version may lack.
OPTIONAL_COLUMNS = {"context_tokens"}
REQUIRED_MANIFEST = (
    "seq_len",
    "overlap",
    "tokenizer",
    "config",
    "pipeline",
    "counts",
    "fill_rate",
    "shards",
)


class Problems(list):
    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self.total = 0

    def add(self, msg: str) -> None:
        self.total += 1
        if len(self) < self.limit:
            self.append(msg)


def validate_output(out: str, max_problems: int = 20) -> Problems:
    """Every problem of the output folder ``out`` (empty when it is a valid finished output)."""
    problems = Problems(max_problems)
    manifest = _read_manifest(out, problems)
    if manifest is None:
        return problems
    seq_len, overlap = int(manifest["seq_len"]), int(manifest["overlap"])
    docs = read_table(join(out, DOCUMENTS))
    doc_ids = docs.column("doc_id").to_pylist()
    doc_len = dict(zip(doc_ids, docs.column("n_tokens").to_pylist(), strict=True))
    if len(doc_len) != len(doc_ids):
        problems.add(f"{DOCUMENTS}: duplicate doc_id")
    # doc -> (start, length, overlap head, overlap tail, last token, first 4 tokens)
    segs: dict[str, list] = defaultdict(list)
    splits: dict[str, set[str]] = defaultdict(set)  # doc -> splits it has segments in
    total_rows = total_tokens = 0
    for entry in manifest["shards"]:
        checked = _check_shard(out, entry, seq_len, overlap, segs, splits, problems)
        if checked is None:
            return problems
        total_rows += checked[0]
        total_tokens += checked[1]
    _check_documents(doc_len, segs, seq_len, overlap, manifest["tokenizer"], problems)
    _check_splits(manifest, splits, problems)
    _check_counts(manifest, len(doc_ids), total_rows, total_tokens, problems)
    return problems


def _read_manifest(out: str, problems: Problems) -> dict | None:
    mpath = join(out, MANIFEST)
    if not exists(mpath):
        problems.add(f"{mpath}: missing: not a finished output")
        return None
    manifest = json.loads(read_bytes(mpath))
    for key in REQUIRED_MANIFEST:
        if key not in manifest:
            problems.add(f"{MANIFEST}: missing key {key!r}")
    if problems:
        return None
    counts = manifest["counts"]
    if not counts.get("documents") or not counts.get("samples") or not manifest["shards"]:
        problems.add(
            f"{MANIFEST}: {counts.get('documents', 0)} documents, {counts.get('samples', 0)} "
            "samples: an empty dataset (nothing to train on)"
        )
        return None
    return manifest


def _check_shard(out, entry, seq_len, overlap, segs, splits, problems):
    """Check one shard file; returns (rows, tokens), or None when its schema is wrong."""
    path = join(out, entry["path"])
    if not exists(path):
        problems.add(f"{entry['path']}: listed in {MANIFEST} but missing")
        return 0, 0
    data = read_bytes(path)
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        problems.add(f"{entry['path']}: sha256 differs from {MANIFEST}")
    table = table_from_bytes(data, path)
    for field in SAMPLE_SCHEMA:
        if (
            field.name not in table.schema.names
            or table.schema.field(field.name).type != field.type
        ):
            problems.add(f"{entry['path']}: column {field.name} missing or not {field.type}")
            return None
    if table.num_rows != entry["rows"]:
        problems.add(f"{entry['path']}: {table.num_rows} rows, manifest says {entry['rows']}")
    split = split_of(entry)
    shard_tokens = 0
    ids_col, len_col = table.column("input_ids"), table.column("seq_lengths")
    did_col, start_col = table.column("doc_ids"), table.column("doc_starts")
    ctx_col = table.column("context_tokens") if "context_tokens" in table.schema.names else None
    for r in range(table.num_rows):
        ids = np.asarray(ids_col[r].values, dtype=np.int32)
        lens = np.asarray(len_col[r].values, dtype=np.int64)
        dids, starts = did_col[r].as_py(), start_col[r].as_py()
        where = f"{entry['path']} row {r}"
        shard_tokens += len(ids)
        if not 1 <= len(ids) <= seq_len:
            problems.add(f"{where}: {len(ids)} tokens, must be 1..{seq_len}")
        if int(lens.sum()) != len(ids) or len(lens) != len(dids) or len(dids) != len(starts):
            problems.add(f"{where}: seq_lengths/doc_ids/doc_starts do not match input_ids")
            continue
        if (lens <= 0).any():
            problems.add(f"{where}: empty segment")
        if ctx_col is not None:
            expect = [
                min(overlap, int(n)) if st > 0 else 0 for st, n in zip(starts, lens, strict=True)
            ]
            if ctx_col[r].as_py() != expect:
                problems.add(f"{where}: context_tokens {ctx_col[r].as_py()} should be {expect}")
        offs = np.r_[0, np.cumsum(lens)]
        for i, (d, s) in enumerate(zip(dids, starts, strict=True)):
            tok = ids[offs[i] : offs[i + 1]]
            k = min(overlap, len(tok))
            segs[d].append(
                (
                    s,
                    len(tok),
                    tok[:k].copy(),
                    tok[len(tok) - k :].copy(),
                    int(tok[-1]),
                    tok[:4].copy(),
                )
            )
            splits[d].add(split)
    if shard_tokens != entry["tokens"]:
        problems.add(f"{entry['path']}: {shard_tokens} tokens, manifest says {entry['tokens']}")
    return table.num_rows, shard_tokens


def _check_documents(doc_len, segs, seq_len, overlap, tokenizer, problems) -> None:
    """Each document's segments cover [0, n_tokens) exactly (plus the declared overlap)."""
    eot = tokenizer.get("end_of_text_id")
    bos = list(tokenizer.get("bos_ids") or [])
    for d in segs:
        if d not in doc_len:
            problems.add(f"segment of unknown document {d!r}")
    for d, n in doc_len.items():
        pieces = sorted(segs.get(d, []), key=lambda p: p[0])
        if not pieces:
            problems.add(f"document {d}: no segment in any shard ({n} tokens lost)")
            continue
        if n <= seq_len and len(pieces) != 1:
            problems.add(
                f"document {d}: {n} tokens <= seq_len but split into {len(pieces)} segments"
            )
        if pieces[0][0] != 0:
            problems.add(f"document {d}: first segment starts at {pieces[0][0]}, not 0")
        for prev, nxt in zip(pieces, pieces[1:], strict=False):
            expect = prev[0] + prev[1] - overlap
            if nxt[0] != expect:
                problems.add(
                    f"document {d}: segment at {nxt[0]} should start at {expect} "
                    f"(gap or overlap other than {overlap})"
                )
            elif overlap and not np.array_equal(prev[3], nxt[2]):
                problems.add(f"document {d}: the {overlap} overlapping tokens at {nxt[0]} differ")
        end = pieces[-1][0] + pieces[-1][1]
        if end != n:
            problems.add(f"document {d}: segments end at {end}, n_tokens is {n}")
        if eot is not None and pieces[-1][4] != eot:
            problems.add(f"document {d}: does not end with the end-of-text token {eot}")
        if bos and pieces[0][5][: len(bos)].tolist() != bos:
            problems.add(f"document {d}: does not start with the tokenizer's BOS {bos}")


def _check_splits(manifest: dict, splits: dict[str, set[str]], problems: Problems) -> None:
    """No document in both splits; the manifest's held-out list matches the shards."""
    for d, where in sorted(splits.items()):
        if len(where) > 1:
            problems.add(f"document {d}: in both the train and the validation split")
    held = {d for d, where in splits.items() if where == {VALIDATION}}
    listed = set(manifest.get("validation_doc_ids") or [])
    if held != listed:
        problems.add(
            f"{MANIFEST}: validation_doc_ids lists {len(listed)} documents, the validation "
            f"shards hold {len(held)} (differ: {sorted(held ^ listed)[:3]})"
        )


def _check_counts(manifest, n_docs, total_rows, total_tokens, problems) -> None:
    counts, seq_len = manifest["counts"], int(manifest["seq_len"])
    if counts.get("samples") != total_rows:
        problems.add(f"{MANIFEST}: counts.samples {counts.get('samples')} != {total_rows} rows")
    if counts.get("tokens") != total_tokens:
        problems.add(f"{MANIFEST}: counts.tokens {counts.get('tokens')} != {total_tokens}")
    if counts.get("documents") != n_docs:
        problems.add(f"{MANIFEST}: counts.documents {counts.get('documents')} != {n_docs}")
    if total_rows and abs(manifest["fill_rate"] - total_tokens / (total_rows * seq_len)) > 1e-5:
        problems.add(f"{MANIFEST}: fill_rate does not match the shards")
