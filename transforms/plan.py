"""The sample plan: which token ranges of which documents form each sample.

Input is only ``(doc_id, n_tokens)`` per document, a few bytes each, so the plan is made over
the whole corpus in one place (never per batch) and the tokens themselves stay distributed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from transforms.packing import Piece, pack_best_fit
from transforms.windowing import window_document


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

    @property
    def total_tokens(self) -> int:
        return sum(self.sample_tokens)


def plan_samples(
    doc_lengths: Iterable[tuple[str, int]],
    *,
    seq_len: int,
    overlap: int = 0,
    samples_per_shard: int = 1024,
) -> SamplePlan:
    """Window every document, pack all pieces, and assign samples to shards.

    Shard ``k`` holds samples ``[k * samples_per_shard, (k + 1) * samples_per_shard)``.
    """
    if samples_per_shard <= 0:
        raise ValueError(f"samples_per_shard must be > 0, got {samples_per_shard}")
    pieces: list[Piece] = []
    seen: set[str] = set()
    for doc_id, n_tokens in sorted(doc_lengths):
        if doc_id in seen:
            raise ValueError(f"duplicate document id {doc_id!r}")
        seen.add(doc_id)
        starts, lengths = window_document(n_tokens, seq_len=seq_len, overlap=overlap)
        pieces.extend(Piece(doc_id, int(s), int(n)) for s, n in zip(starts, lengths, strict=True))
    samples = pack_best_fit(pieces, seq_len=seq_len)
    by_doc: dict[str, list[Assignment]] = {}
    sample_tokens = []
    for sid, sample in enumerate(samples):
        sample_tokens.append(sum(p.length for p in sample))
        for slot, p in enumerate(sample):
            by_doc.setdefault(p.doc_id, []).append(
                Assignment(sid, slot, p.start, p.length, sid // samples_per_shard)
            )
    n_shards = -(-len(samples) // samples_per_shard)
    return SamplePlan(
        seq_len=seq_len,
        overlap=overlap,
        n_samples=len(samples),
        n_shards=n_shards,
        samples_per_shard=samples_per_shard,
        by_doc=by_doc,
        sample_tokens=sample_tokens,
    )
