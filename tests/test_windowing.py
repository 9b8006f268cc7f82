import pytest
from hypothesis import given
from hypothesis import strategies as st

from transforms.samples.windowing import window_document


@pytest.mark.parametrize(
    ("n", "seq_len", "overlap", "starts", "lengths"),
    [
        (1, 4, 0, [0], [1]),
        (4, 4, 0, [0], [4]),  # exact fit: never split
        (4, 4, 3, [0], [4]),
        (5, 4, 0, [0, 4], [4, 1]),
        (10, 4, 0, [0, 4, 8], [4, 4, 2]),
        (10, 4, 1, [0, 3, 6], [4, 4, 4]),
        (11, 4, 1, [0, 3, 6, 9], [4, 4, 4, 2]),
        (8, 4, 2, [0, 2, 4], [4, 4, 4]),
        (9, 4, 3, [0, 1, 2, 3, 4, 5], [4, 4, 4, 4, 4, 4]),
    ],
)
def test_windows_exact(n, seq_len, overlap, starts, lengths):
    s, lens = window_document(n, seq_len=seq_len, overlap=overlap)
    assert s.tolist() == starts
    assert lens.tolist() == lengths


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"seq_len": 0}, "seq_len"),
        ({"seq_len": 4, "overlap": 4}, "overlap"),
        ({"seq_len": 4, "overlap": -1}, "overlap"),
    ],
)
def test_windows_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        window_document(10, **kw)


@given(n=st.integers(1, 5000), seq_len=st.integers(1, 600), data=st.data())
def test_windows_cover_every_token_once_plus_overlap(n, seq_len, data):
    overlap = data.draw(st.integers(0, seq_len - 1))
    starts, lengths = window_document(n, seq_len=seq_len, overlap=overlap)
    covered = [0] * n
    for s, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        assert 1 <= length <= seq_len
        for i in range(s, s + length):
            covered[i] += 1
    assert min(covered) >= 1
    assert starts[0] == 0 and starts[-1] + lengths[-1] == n
    if n <= seq_len:
        assert len(starts) == 1
    # consecutive windows share exactly `overlap` tokens, and all but the last are full
    for i in range(1, len(starts)):
        assert starts[i - 1] + lengths[i - 1] - starts[i] == overlap
        assert lengths[i - 1] == seq_len
    assert sum(covered) == n + overlap * (len(starts) - 1)


@pytest.mark.parametrize(
    ("n", "seq_len", "overlap", "bounds", "chapters", "slack", "starts", "lengths"),
    [
        (10, 4, 0, [3], [], 1, [0, 3, 7], [3, 4, 3]),  # boundary within slack: window ends early
        (10, 4, 0, [2], [], 1, [0, 4, 8], [4, 4, 2]),  # boundary out of reach: plain cut
        (20, 8, 0, [5, 7], [6], 3, [0, 6, 14], [6, 8, 6]),  # a chapter wins over a later paragraph
        (20, 8, 0, [5, 7], [], 3, [0, 7, 15], [7, 8, 5]),  # else the latest paragraph in reach
        (20, 8, 2, [5], [], 2, [0, 5, 11, 17], [7, 8, 8, 3]),  # overlap exact; next start = bound
        (8, 8, 0, [3], [3], 3, [0], [8]),  # a document that fits is never split
    ],
)
def test_windows_start_at_boundaries_within_slack(
    n, seq_len, overlap, bounds, chapters, slack, starts, lengths
):
    s, lens = window_document(
        n, seq_len=seq_len, overlap=overlap, tiers=[chapters, bounds], slack=slack
    )
    assert s.tolist() == starts and lens.tolist() == lengths


@given(n=st.integers(1, 3000), seq_len=st.integers(2, 300), data=st.data())
def test_boundary_windows_never_lose_or_duplicate_a_token(n, seq_len, data):
    overlap = data.draw(st.integers(0, seq_len - 1))
    slack = data.draw(st.integers(0, seq_len))
    bounds = sorted(set(data.draw(st.lists(st.integers(0, n), max_size=50))))
    chapters = [b for b in bounds if data.draw(st.booleans())]
    starts, lengths = window_document(
        n, seq_len=seq_len, overlap=overlap, tiers=[chapters, bounds], slack=slack
    )
    assert starts[0] == 0 and starts[-1] + lengths[-1] == n
    assert all(1 <= x <= seq_len for x in lengths.tolist())
    for i in range(1, len(starts)):
        assert starts[i - 1] + lengths[i - 1] - starts[i] == overlap  # exact overlap
        assert starts[i] > starts[i - 1]
        # a window is shorter than seq_len only to start the next one at a boundary
        if lengths[i - 1] < seq_len:
            assert starts[i] in bounds
            assert seq_len - lengths[i - 1] <= slack
    if n <= seq_len:
        assert len(starts) == 1
