import pytest
from hypothesis import given
from hypothesis import strategies as st

from transforms.windowing import window_document


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
