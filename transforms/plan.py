"""The sample plan: which token ranges of which documents form each sample.

Input is one small :class:`DocInfo` per document (its length, kind, windows and score, no
tokens), so the plan is made over the whole corpus in one place (never per batch) while the
tokens stay distributed. Steps, in order:

1. ``--min-dependency-score``: scored documents below it are left out (unscored ones, shorter
   than the score's reach, are kept);
2. ``--mix``: per-kind token shares (:mod:`transforms.mixture`);
3. related packing of every window (:func:`transforms.packing.pack_related`): same source
   first, then same kind and language, then anything;
4. samples in order, ``samples_per_shard`` to a shard.

Documents left out come back in ``SamplePlan.left_out`` with a reason, for ``rejects.jsonl``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from transforms.mixture import select_mixture
from transforms.packing import Piece, fill_free_room, pack_related
from transforms.windowing import window_document


@dataclass
class DocInfo:
    """What the planner needs of a document. Without ``starts``, plain windows are used."""

    doc_id: str
    n_tokens: int
    kind: str = "book"
    group: str = ""  # kind and language, e.g. "code:python"
    source: str = ""  # the input it came from (a records file); default: the document itself
    origin: str = ""
    score: float | None = None
    starts: np.ndarray | None = None
    lengths: np.ndarray | None = None
    cache_key: str | None = None  # --incremental bookkeeping; not used by the plan


@dataclass(frozen=True)
class Assignment:
    """One segment: ``length`` tokens of a document from ``start`` go to slot ``slot`` of a sample."""

    sample: int
    slot: int
    start: int
    length: int
    shard: int


@dataclass
class SamplePlan:
    seq_len: int
    overlap: int
    n_samples: int
    n_shards: int
    samples_per_shard: int
    by_doc: dict[str, list[Assignment]]
    sample_tokens: list[int]
    left_out: list[tuple[str, str, str, str]] = field(default_factory=list)  # id, origin, why
    mixture: dict | None = None
    packing: dict = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return sum(self.sample_tokens)


def _as_info(d) -> DocInfo:
    return d if isinstance(d, DocInfo) else DocInfo(doc_id=d[0], n_tokens=int(d[1]))


def plan_samples(
    docs: Iterable[DocInfo | tuple[str, int]],
    *,
    seq_len: int,
    overlap: int = 0,
    samples_per_shard: int = 1024,
    mix: dict[str, float] | None = None,
    seed: int = 0,
    min_score: float | None = None,
    fill_gaps: bool = False,
) -> SamplePlan:
    """Filter, window, pack and shard the whole corpus (see the module docstring)."""
    if samples_per_shard <= 0:
        raise ValueError(f"samples_per_shard must be > 0, got {samples_per_shard}")
    infos = sorted((_as_info(d) for d in docs), key=lambda d: d.doc_id)
    for a, b in zip(infos, infos[1:], strict=False):
        if a.doc_id == b.doc_id:
            raise ValueError(f"duplicate document id {a.doc_id!r}")
    left_out: list[tuple[str, str, str, str]] = []
    if min_score is not None:
        low = [d for d in infos if d.score is not None and d.score < min_score]
        left_out += [
            (d.doc_id, d.origin, "low_dependency_score", f"{d.score:.4f} < {min_score}")
            for d in low
        ]
        infos = [d for d in infos if d.score is None or d.score >= min_score]
    mixture = None
    if mix:
        kept, mixture = select_mixture(((d.doc_id, d.kind, d.n_tokens) for d in infos), mix, seed)
        left_out += [
            (d.doc_id, d.origin, "mixture", f"not selected for --mix (kind {d.kind})")
            for d in infos
            if d.doc_id not in kept
        ]
        infos = [d for d in infos if d.doc_id in kept]
    pieces: list[Piece] = []
    source_of: dict[str, str] = {}
    group_of: dict[str, str] = {}
    for d in infos:
        if d.starts is None:
            starts, lengths = window_document(d.n_tokens, seq_len=seq_len, overlap=overlap)
        else:
            starts, lengths = d.starts, d.lengths
        pieces.extend(Piece(d.doc_id, int(s), int(n)) for s, n in zip(starts, lengths, strict=True))
        source_of[d.doc_id] = d.source or d.doc_id
        group_of[d.doc_id] = d.group or d.kind
    samples = pack_related(pieces, [source_of, group_of], seq_len=seq_len)
    rule = "best-fit decreasing within source, then within kind:language, then all"
    if fill_gaps:
        if overlap:
            raise ValueError("fill_gaps needs overlap 0: cut pieces would not overlap")
        long_docs = {d.doc_id for d in infos if d.n_tokens > seq_len}
        samples = fill_free_room(samples, long_docs, seq_len=seq_len)
        rule += "; emptiest samples of split documents poured into free room (--fill-gaps)"
    by_doc: dict[str, list[Assignment]] = {}
    sample_tokens = []
    one_source = one_group = 0
    for sid, sample in enumerate(samples):
        sample_tokens.append(sum(p.length for p in sample))
        one_source += len({source_of[p.doc_id] for p in sample}) == 1
        one_group += len({group_of[p.doc_id] for p in sample}) == 1
        for slot, p in enumerate(sample):
            by_doc.setdefault(p.doc_id, []).append(
                Assignment(sid, slot, p.start, p.length, sid // samples_per_shard)
            )
    n_shards = -(-len(samples) // samples_per_shard)
    n = max(len(samples), 1)
    packing = {
        "rule": rule,
        "samples_one_source": one_source / n,
        "samples_one_kind_language": one_group / n,
        "samples_with_several_segments": sum(len(s) > 1 for s in samples) / n,
    }
    return SamplePlan(
        seq_len=seq_len,
        overlap=overlap,
        n_samples=len(samples),
        n_shards=n_shards,
        samples_per_shard=samples_per_shard,
        by_doc=by_doc,
        sample_tokens=sample_tokens,
        left_out=left_out,
        mixture=mixture,
        packing=packing,
    )
