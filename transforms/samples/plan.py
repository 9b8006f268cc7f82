"""The sample plan: which token ranges of which documents form each sample.

Input is one small :class:`DocInfo` per document (its length, kind, windows and score, no
tokens), so the plan is made over the whole corpus in one place (never per batch) while the
tokens stay distributed. Steps, in order:

1. ``--min-dependency-score``: scored documents below it are left out (unscored ones, shorter
   than the score's reach, are kept);
2. ``--mix``: per-kind token shares (:mod:`transforms.samples.mixture`);
3. ``--eval-fraction``: whole documents held out for validation (:func:`held_out`);
4. per split, related packing of every window (:func:`transforms.samples.packing.pack_related`): same
   source first, then same kind and language, then anything (``--packing plain``: one
   best-fit-decreasing pass with no relatedness, for ablations);
5. samples in order, train samples first, ``samples_per_shard`` to a shard of each split.

Documents left out come back in ``SamplePlan.left_out`` as :class:`Reject` s, for
``rejects.jsonl``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from transforms.documents import Reject, compact_reduce
from transforms.samples.mixture import select_mixture
from transforms.samples.packing import Piece, fill_free_room, pack_related
from transforms.samples.windowing import window_document

TRAIN, VALIDATION = "train", "validation"
SPLITS = (TRAIN, VALIDATION)
PACKINGS = ("related", "plain")


@dataclass(frozen=True)
class PlanSettings:
    """Everything that shapes the plan (the pipeline builds it from its flags)."""

    seq_len: int
    overlap: int = 0
    samples_per_shard: int = 1024
    mix: dict[str, float] | None = None
    seed: int = 0
    min_score: dict[str, float] | None = None  # per kind; a kind not named is not filtered
    fill_gaps: bool = False
    packing: str = "related"  # related | plain (ablations)
    eval_fraction: float = 0.0  # share of tokens held out as whole documents


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
    reused: bool = False  # --incremental: loaded from the cache, not tokenized

    __reduce__ = compact_reduce  # pickled compactly: Beam pickles one a document per stage


@dataclass(frozen=True)
class Assignment:
    """One segment: ``length`` tokens of a document from ``start`` go to slot ``slot`` of
    sample ``sample`` (numbered over both splits), in shard ``shard`` of ``split``."""

    sample: int
    slot: int
    start: int
    length: int
    shard: int
    split: str = TRAIN
    context: int = 0  # leading tokens that repeat the previous window's (--overlap): no loss


@dataclass
class SamplePlan:
    seq_len: int
    overlap: int
    n_samples: int
    shards: dict[str, int]  # split -> number of shards (a split without samples is absent)
    samples_per_shard: int
    by_doc: dict[str, list[Assignment]]
    sample_tokens: list[int]
    left_out: list[Reject] = field(default_factory=list)
    mixture: dict | None = None
    packing: dict = field(default_factory=dict)
    validation_doc_ids: list[str] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return sum(self.sample_tokens)


def _as_info(d) -> DocInfo:
    return d if isinstance(d, DocInfo) else DocInfo(doc_id=d[0], n_tokens=int(d[1]))


def held_out(infos: list[DocInfo], fraction: float, seed: int) -> set[str]:
    """Whole documents for validation: in the order of ``sha256(seed|doc_id)``, documents are
    taken until they hold ``fraction`` of all tokens; at least one when ``fraction > 0`` and
    there are two or more documents, never all of them. The choice depends only on the ids,
    their lengths and the seed, so the same inputs give the same split on every run, and a
    repository or book is never divided between the splits.

    >>> sorted(held_out([DocInfo("a", 10), DocInfo("b", 10), DocInfo("c", 10)], 0.3, 0))
    ['a']
    """
    if fraction <= 0 or len(infos) < 2:
        return set()
    total = sum(d.n_tokens for d in infos)
    order = sorted(infos, key=lambda d: hashlib.sha256(f"{seed}|{d.doc_id}".encode()).digest())
    chosen, tokens = set(), 0
    for d in order[:-1]:
        if chosen and tokens >= fraction * total:
            break
        chosen.add(d.doc_id)
        tokens += d.n_tokens
    return chosen


def _filter(infos: list[DocInfo], settings: PlanSettings):
    """--min-dependency-score and --mix: (kept infos, left out as rejects, mixture summary)."""
    left_out: list[Reject] = []
    if settings.min_score:

        def floor(d: DocInfo) -> float | None:
            return settings.min_score.get(d.kind) if d.score is not None else None

        low = [d for d in infos if floor(d) is not None and d.score < floor(d)]
        left_out += [
            Reject(d.origin, "low_dependency_score", f"{d.score:.4f} < {floor(d)} ({d.kind})")
            for d in low
        ]
        low_ids = {d.doc_id for d in low}
        infos = [d for d in infos if d.doc_id not in low_ids]
    mixture = None
    if settings.mix:
        kept, mixture = select_mixture(
            ((d.doc_id, d.kind, d.n_tokens) for d in infos), settings.mix, settings.seed
        )
        left_out += [
            Reject(d.origin, "mixture", f"not selected for --mix (kind {d.kind})")
            for d in infos
            if d.doc_id not in kept
        ]
        infos = [d for d in infos if d.doc_id in kept]
    return infos, left_out, mixture


def _pack(infos: list[DocInfo], settings: PlanSettings, source_of, group_of):
    """Window and pack one split's documents -> list of samples (lists of pieces)."""
    seq_len = settings.seq_len
    pieces: list[Piece] = []
    for d in infos:
        if d.starts is None:
            starts, lengths = window_document(d.n_tokens, seq_len=seq_len, overlap=settings.overlap)
        else:
            starts, lengths = d.starts, d.lengths
        pieces.extend(Piece(d.doc_id, int(s), int(n)) for s, n in zip(starts, lengths, strict=True))
    levels = [source_of, group_of] if settings.packing == "related" else []
    samples = pack_related(pieces, levels, seq_len=seq_len)
    if settings.fill_gaps:
        if settings.overlap:
            raise ValueError("fill_gaps needs overlap 0: cut pieces would not overlap")
        long_docs = {d.doc_id for d in infos if d.n_tokens > seq_len}
        samples = fill_free_room(samples, long_docs, seq_len=seq_len)
    return samples


def _rule(settings: PlanSettings) -> str:
    if settings.packing == "related":
        rule = "best-fit decreasing within source, then within kind:language, then all"
    else:
        rule = "best-fit decreasing over all pieces, no relatedness (--packing plain)"
    if settings.fill_gaps:
        rule += "; emptiest samples of split documents poured into free room (--fill-gaps)"
    return rule


def plan_samples(docs: Iterable[DocInfo | tuple[str, int]], settings: PlanSettings) -> SamplePlan:
    """Filter, hold out, window, pack and shard the whole corpus (see the module docstring)."""
    if settings.samples_per_shard <= 0:
        raise ValueError(f"samples_per_shard must be > 0, got {settings.samples_per_shard}")
    if settings.packing not in PACKINGS:
        raise ValueError(f"unknown packing {settings.packing!r} ({', '.join(PACKINGS)})")
    infos = sorted((_as_info(d) for d in docs), key=lambda d: d.doc_id)
    for a, b in zip(infos, infos[1:], strict=False):
        if a.doc_id == b.doc_id:
            raise ValueError(f"duplicate document id {a.doc_id!r}")
    infos, left_out, mixture = _filter(infos, settings)
    source_of = {d.doc_id: d.source or d.doc_id for d in infos}
    group_of = {d.doc_id: d.group or d.kind for d in infos}
    validation = held_out(infos, settings.eval_fraction, settings.seed)
    by_doc: dict[str, list[Assignment]] = {}
    sample_tokens: list[int] = []
    shards: dict[str, int] = {}

    def context(p: Piece) -> int:
        # a window after a document's first repeats the previous window's last --overlap tokens
        return min(settings.overlap, p.length) if p.start > 0 else 0

    one_source = one_group = several = 0
    for split in SPLITS:
        part = [d for d in infos if (d.doc_id in validation) == (split == VALIDATION)]
        samples = _pack(part, settings, source_of, group_of) if part else []
        for index, sample in enumerate(samples):
            sid = len(sample_tokens)
            sample_tokens.append(sum(p.length for p in sample))
            one_source += len({source_of[p.doc_id] for p in sample}) == 1
            one_group += len({group_of[p.doc_id] for p in sample}) == 1
            several += len(sample) > 1
            shard = index // settings.samples_per_shard
            for slot, p in enumerate(sample):
                by_doc.setdefault(p.doc_id, []).append(
                    Assignment(sid, slot, p.start, p.length, shard, split, context(p))
                )
        if samples:
            shards[split] = -(-len(samples) // settings.samples_per_shard)
    n = max(len(sample_tokens), 1)
    packing = {
        "rule": _rule(settings),
        "samples_one_source": one_source / n,
        "samples_one_kind_language": one_group / n,
        "samples_with_several_segments": several / n,
    }
    return SamplePlan(
        seq_len=settings.seq_len,
        overlap=settings.overlap,
        n_samples=len(sample_tokens),
        shards=shards,
        samples_per_shard=settings.samples_per_shard,
        by_doc=by_doc,
        sample_tokens=sample_tokens,
        left_out=left_out,
        mixture=mixture,
        packing=packing,
        validation_doc_ids=sorted(validation),
    )
