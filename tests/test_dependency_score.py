"""The long-dependency score on real books: a novel outranks its own paragraphs shuffled."""

import random

import numpy as np
import pytest

from transforms.code.dependency_score import MIN_TOKENS, dependency_score
from transforms.documents import BOOK, TextDocument
from transforms.inputs.reading import ReadSettings, read_book
from transforms.samples.tokenize import encode_document


@pytest.mark.parametrize(
    "book", ["austen-pride-and-prejudice", "melville-moby-dick", "tolstoy-war-and-peace"]
)
def test_novel_scores_above_its_shuffled_paragraphs(books_dir, qwen3, book):
    doc = read_book(str(books_dir / f"{book}.txt"), "book/x", ReadSettings())
    paragraphs = doc.texts[0].split("\n\n")
    random.Random(0).shuffle(paragraphs)
    shuffled = TextDocument("book/y", BOOK, "-", ["\n\n".join(paragraphs)])
    ordered_score = dependency_score(encode_document(doc, qwen3))
    shuffled_score = dependency_score(encode_document(shuffled, qwen3))
    assert ordered_score > shuffled_score + 0.005
    assert abs(shuffled_score) < 0.005


def test_short_sequences_get_no_score():
    assert dependency_score(np.arange(MIN_TOKENS - 1, dtype=np.int32)) is None
    assert dependency_score(np.zeros(MIN_TOKENS, dtype=np.int32)) == 0.0  # no rare ids


def test_repeating_block_scores_by_distance():
    # A 6K-token block of distinct ids, repeated: every rare id recurs 6K back (near), and the
    # far window (28K-36K back) also holds the block, so near and far tie: score 0.
    rng = np.random.default_rng(0)
    block = rng.permutation(np.arange(100_000, 106_144)).astype(np.int32)
    tokens = np.tile(block, 10)
    assert dependency_score(tokens) == pytest.approx(0.0, abs=1e-9)
