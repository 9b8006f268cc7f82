"""Assemble packed samples into Arrow tables (the shard rows of schemas.SAMPLE_SCHEMA).

Segments arrive as :class:`Segment` s; rows are built with
numpy offsets (no per-token Python loop) in sample order, segments in slot order. A sample's
``dependency_score`` is the token-weighted mean of its scored segments (null if none).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from schemas.columns import DOCUMENT_SCHEMA, SAMPLE_SCHEMA

_ATTRIBUTE = {"chapter_starts": "chapters", "dependency_score": "score"}
# each documents.arrow column: (name, the document's attribute, whether it is a list column),
# read from the schema once (the schema's fields walked for each row: 12 us a row, 2 this way)
_ROW_COLUMNS = tuple(
    (f.name, _ATTRIBUTE.get(f.name, f.name), pa.types.is_list(f.type)) for f in DOCUMENT_SCHEMA
)


class Segment(NamedTuple):
    """One segment's ids, placed: slot ``slot`` of sample ``sample``."""

    sample: int
    slot: int
    doc_id: str
    start: int
    tokens: np.ndarray
    score: float | None = None
    context: int = 0  # leading tokens that only give context (--overlap repeats)


def document_row(doc, n_segments: int) -> dict:
    """A documents.arrow row: each column of ``DOCUMENT_SCHEMA`` from the tokenized document's
    attribute of that name (``chapter_starts`` <- ``chapters``, ``dependency_score`` <-
    ``score``), so a new column is a schema field plus the attribute."""
    row = {}
    for name, attribute, is_list in _ROW_COLUMNS:
        if name == "n_segments":
            row[name] = n_segments
            continue
        value = getattr(doc, attribute)
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif value is None and is_list:
            value = []
        row[name] = value
    return row


def build_sample_table(segments: Iterable[Segment]) -> pa.Table:
    """One Arrow table with a row per sample, sorted by sample index."""
    segs = sorted(segments, key=lambda s: (s[0], s[1]))
    if not segs:
        return SAMPLE_SCHEMA.empty_table()
    seg_lengths = np.fromiter((s[4].shape[0] for s in segs), dtype=np.int32, count=len(segs))
    sample_of = np.fromiter((s[0] for s in segs), dtype=np.int64, count=len(segs))
    # Row boundaries: where the sample index changes.
    row_starts = np.flatnonzero(np.r_[True, sample_of[1:] != sample_of[:-1]])
    seg_offsets = np.r_[row_starts, len(segs)].astype(np.int32)
    tok_cum = np.r_[0, np.cumsum(seg_lengths, dtype=np.int64)]
    tok_offsets = tok_cum[seg_offsets].astype(np.int32)
    flat_tokens = np.concatenate([s[4] for s in segs]).astype(np.int32, copy=False)
    n_tokens = np.diff(tok_offsets).astype(np.int32)
    arrays = [
        pa.ListArray.from_arrays(pa.array(tok_offsets), pa.array(flat_tokens, pa.int32())),
        pa.ListArray.from_arrays(pa.array(seg_offsets), pa.array(seg_lengths, pa.int32())),
        pa.ListArray.from_arrays(
            pa.array(seg_offsets), pa.array([s[2] for s in segs], pa.string())
        ),
        pa.ListArray.from_arrays(
            pa.array(seg_offsets), pa.array(np.array([s[3] for s in segs], np.int64), pa.int64())
        ),
        pa.array(n_tokens, pa.int32()),
        pa.array(_sample_scores(segs, seg_lengths, seg_offsets), pa.float32()),
        pa.ListArray.from_arrays(
            pa.array(seg_offsets),
            pa.array(np.array([_context(s) for s in segs], np.int32), pa.int32()),
        ),
    ]
    return pa.Table.from_arrays(arrays, schema=SAMPLE_SCHEMA)


def _context(seg) -> int:
    return int(seg[6]) if len(seg) > 6 else 0


def batches_of_samples(refs: Iterable[tuple], rows: int) -> Iterable[list[tuple]]:
    """Segment references ``(sample, slot, ...)`` sorted by (sample, slot), cut into lists that
    hold ``rows`` consecutive samples each (the last may hold fewer): one record batch each."""
    batch: list[tuple] = []
    samples = 0
    last = None
    for ref in sorted(refs, key=lambda r: (r[0], r[1])):
        if ref[0] != last:
            if samples == rows:
                yield batch
                batch, samples = [], 0
            samples += 1
            last = ref[0]
        batch.append(ref)
    if batch:
        yield batch


def _sample_scores(segs, seg_lengths, seg_offsets) -> list[float | None]:
    out = []
    for lo, hi in zip(seg_offsets[:-1], seg_offsets[1:], strict=True):
        num = den = 0.0
        for k in range(lo, hi):
            score = segs[k][5] if len(segs[k]) > 5 else None
            if score is not None:
                num += score * float(seg_lengths[k])
                den += float(seg_lengths[k])
        out.append(num / den if den else None)
    return out


def build_document_table(rows: Iterable[dict]) -> pa.Table:
    """documents.arrow: one row per accepted document, sorted by doc_id."""
    rows = sorted(rows, key=lambda r: r["doc_id"])
    return pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA)
