import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.samples.packing import (
    SCAN_MAX,
    Piece,
    _CapacityIndex,
    _indexed_best_fit,
    _scan_best_fit,
    pack_best_fit,
)
from transforms.samples.plan import PlanSettings, plan_samples


def ids(samples):
    return [[(p.doc_id, p.start, p.length) for p in s] for s in samples]


def test_docstring_example():
    ps = [Piece("a", 0, 7), Piece("b", 0, 5), Piece("c", 0, 4), Piece("d", 0, 3), Piece("e", 0, 1)]
    assert ids(pack_best_fit(ps, seq_len=10)) == [
        [("a", 0, 7), ("d", 0, 3)],
        [("b", 0, 5), ("c", 0, 4), ("e", 0, 1)],
    ]


def test_best_fit_prefers_the_fullest_sample_that_fits():
    # after 6, 5, 3: free room is 4 (s0), 5 (s1); then 3 -> s0 (free 4, tightest), 4 -> s1? no:
    ps = [Piece("a", 0, 6), Piece("b", 0, 5), Piece("c", 0, 4), Piece("d", 0, 4)]
    # a->s0 (free 4), b->s1 (free 5), c -> s0 (free 4 is the tightest fit), d -> s1 (free 5)
    assert ids(pack_best_fit(ps, seq_len=10)) == [
        [("a", 0, 6), ("c", 0, 4)],
        [("b", 0, 5), ("d", 0, 4)],
    ]


def test_full_pieces_are_samples_of_their_own_and_order_is_deterministic():
    ps = [Piece("z", 0, 2), Piece("b", 8, 8), Piece("a", 0, 8), Piece("y", 0, 2)]
    assert ids(pack_best_fit(ps, seq_len=8)) == [
        [("a", 0, 8)],
        [("b", 8, 8)],
        [("y", 0, 2), ("z", 0, 2)],
    ]
    assert ids(pack_best_fit(list(reversed(ps)), seq_len=8)) == ids(pack_best_fit(ps, seq_len=8))


def test_empty_and_bad_pieces():
    assert pack_best_fit([], seq_len=8) == []
    with pytest.raises(ValueError, match="window documents before packing"):
        pack_best_fit([Piece("a", 0, 9)], seq_len=8)
    with pytest.raises(ValueError, match="1..seq_len"):
        pack_best_fit([Piece("a", 0, 0)], seq_len=8)


@settings(max_examples=300, deadline=None)
@given(
    seq_len=st.integers(1, 40),
    lengths=st.lists(st.integers(1, 40), max_size=2 * SCAN_MAX),
)
def test_a_scan_of_the_open_samples_packs_as_the_capacity_index_does(seq_len, lengths):
    """Small calls (at most SCAN_MAX pieces: one source's windows, at pack_related's first
    level) scan the open samples instead of building the index (a 262,144-counter list at
    --seq-len 65536: 0.22 s of a 458-source plan). Both give the same samples, ties
    included (the lowest sample id among equally full ones)."""
    pieces = [Piece(f"d{i % 7}", i, min(n, seq_len)) for i, n in enumerate(lengths)]
    order = sorted(pieces, key=lambda p: (-p.length, p.doc_id, p.start))
    assert ids(_scan_best_fit(order, seq_len)) == ids(_indexed_best_fit(order, seq_len))


def test_capacity_index():
    idx = _CapacityIndex(10)
    assert idx.first_at_least(0) == -1
    idx.add(3, 1)
    idx.add(7, 1)
    assert [idx.first_at_least(x) for x in (0, 3, 4, 7, 8)] == [3, 3, 7, 7, -1]
    idx.add(3, -1)
    assert idx.first_at_least(0) == 7


def test_plan_windows_then_packs():
    plan = plan_samples(
        [("long", 10), ("short", 3), ("mid", 5)],
        PlanSettings(seq_len=4, overlap=1, samples_per_shard=2),
    )
    # long -> [0,4) [3,7) [6,10): three full windows; mid -> [0,4) full + [3,5) tail of 2; short 3
    assert plan.n_samples == 6
    assert plan.shards == {"train": 3}
    assert [(a.start, a.length) for a in plan.by_doc["long"]] == [(0, 4), (3, 4), (6, 4)]
    # each later window repeats the previous one's last token: context only, no second loss
    assert [a.context for a in plan.by_doc["long"]] == [0, 1, 1]
    assert [a.context for a in plan.by_doc["short"]] == [0]
    assert sorted((a.start, a.length) for a in plan.by_doc["mid"]) == [(0, 4), (3, 2)]
    assert all(a.shard == a.sample // 2 for d in plan.by_doc.values() for a in d)


def test_plan_rejects_duplicate_ids():
    with pytest.raises(ValueError, match="duplicate document id"):
        plan_samples([("a", 3), ("a", 4)], PlanSettings(seq_len=8))


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 3000), min_size=1, max_size=120),
    seq_len=st.integers(16, 1024),
    data=st.data(),
)
def test_plan_never_loses_or_duplicates_a_token(lengths, seq_len, data):
    overlap = data.draw(st.integers(0, seq_len // 2))
    docs = [(f"d{i}", n) for i, n in enumerate(lengths)]
    plan = plan_samples(docs, PlanSettings(seq_len=seq_len, overlap=overlap, samples_per_shard=7))
    per_sample = [0] * plan.n_samples
    slots = set()
    for doc_id, n in docs:
        segs = sorted(plan.by_doc[doc_id], key=lambda a: a.start)
        if n <= seq_len:
            assert len(segs) == 1
        assert segs[0].start == 0 and segs[-1].start + segs[-1].length == n
        for a, b in zip(segs, segs[1:], strict=False):
            assert b.start == a.start + a.length - overlap
        for a in segs:
            per_sample[a.sample] += a.length
            assert (a.sample, a.slot) not in slots
            slots.add((a.sample, a.slot))
    assert all(0 < t <= seq_len for t in per_sample)
    assert per_sample == plan.sample_tokens


def test_packing_quality_on_many_short_documents():
    # 2000 documents of 1..4000 tokens into 16K samples: BFD lands within 1% (or 1) of the bound.
    import random

    rng = random.Random(0)
    lengths = [rng.randint(1, 4000) for _ in range(2000)]
    plan = plan_samples([(f"d{i}", n) for i, n in enumerate(lengths)], PlanSettings(seq_len=16384))
    bound = math.ceil(sum(lengths) / 16384)
    assert plan.n_samples <= max(bound + 1, math.ceil(bound * 1.01))


@settings(max_examples=150)
@given(
    lengths=st.lists(st.integers(1, 5000), min_size=1, max_size=80),
    seq_len=st.integers(300, 2048),
)
def test_fill_gaps_keeps_every_token_cuts_only_long_documents_and_never_adds_samples(
    lengths, seq_len
):
    docs = [(f"d{i}", n) for i, n in enumerate(lengths)]
    plain = plan_samples(docs, PlanSettings(seq_len=seq_len))
    filled = plan_samples(docs, PlanSettings(seq_len=seq_len, fill_gaps=True))
    assert filled.n_samples <= plain.n_samples
    per_sample = [0] * filled.n_samples
    for doc_id, n in docs:
        segs = sorted(filled.by_doc[doc_id], key=lambda a: a.start)
        if n <= seq_len:  # a document that fits stays whole
            assert len(segs) == 1 and segs[0].length == n
        assert segs[0].start == 0 and segs[-1].start + segs[-1].length == n
        for a, b in zip(segs, segs[1:], strict=False):
            assert b.start == a.start + a.length  # contiguous: no token lost or repeated
        for a in segs:
            per_sample[a.sample] += a.length
    assert all(0 < t <= seq_len for t in per_sample)
    assert per_sample == filled.sample_tokens


def test_fill_gaps_reaches_the_lower_bound_where_long_documents_leave_room():
    # 30 documents of a full window and a 9,000-token tail: no two tails fit together, so BFD
    # needs 60 samples for a bound of 47; pouring the emptiest tails into the room the others
    # leave closes the gap. Two short documents stay whole.
    lengths = [16384 + 9000] * 30 + [3000, 5000]
    docs = [(f"d{i}", n) for i, n in enumerate(lengths)]
    bound = math.ceil(sum(lengths) / 16384)
    plain = plan_samples(docs, PlanSettings(seq_len=16384))
    filled = plan_samples(docs, PlanSettings(seq_len=16384, fill_gaps=True))
    assert plain.n_samples > bound + 10
    assert filled.n_samples <= max(bound + 1, math.ceil(bound * 1.01))
    assert [len(filled.by_doc[d]) for d in ("d30", "d31")] == [1, 1]
    with pytest.raises(ValueError, match="overlap"):
        plan_samples(docs, PlanSettings(seq_len=16384, overlap=10, fill_gaps=True))
