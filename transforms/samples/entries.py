"""A tokenized document's entry: what the token store, the ``--incremental`` cache and the
early tokenizers hold for one document (ids, chapter offsets, windows, long-dependency scores),
and the content hash it is keyed by. Pure functions; the tokenize step, the early tokenizer of
the read step and the head start (``pipeline/head_start.py``, which runs without Beam) all
make entries here, so each makes the same bytes."""

from __future__ import annotations

import hashlib

from transforms.code.dependency_score import dependency_score, window_scores
from transforms.documents import TextDocument

# Documents tokenized ahead of the tokenize step (early, or by the head start) are those of at
# least this many characters: for smaller ones the hand-off costs more than the overlap gains.
EARLY_MIN_CHARS = 64 * 1024


def worth_tokenizing_early(doc: TextDocument) -> bool:
    """The same test on every side: what is made ahead, and what the tokenize step looks for."""
    return sum(len(t) for t in doc.texts) >= EARLY_MIN_CHARS


def content_sha256(doc: TextDocument) -> str:
    h = hashlib.sha256()
    for name, text in zip(doc.files or [""] * len(doc.texts), doc.texts, strict=True):
        h.update(
            name.encode("utf-8", "replace") + b"\0" + text.encode("utf-8", "surrogatepass") + b"\0"
        )
    return h.hexdigest()


def tokenize_entries(docs: list[TextDocument], tok, config) -> list[dict]:
    """Each document's ids, chapter offsets, windows and long-dependency score (of the whole
    document and of each window: the shard writer, one process per shard, would otherwise
    score the windows after every worker is done): what the token store and the
    ``--incremental`` cache hold. One tokenizer call for the whole list. ``config``: anything
    with the run's ``seq_len``, ``overlap`` and ``slack``."""
    from transforms.samples.tokenize import encode_and_window_many

    out = []
    for enc, starts, lengths in encode_and_window_many(
        docs, tok, seq_len=config.seq_len, overlap=config.overlap, slack=config.slack
    ):
        score = dependency_score(enc.tokens)
        out.append(
            {
                "tokens": enc.tokens,
                "chapters": enc.chapters,
                "starts": starts,
                "lengths": lengths,
                "score": score,
                "window_scores": window_scores(enc.tokens, starts, lengths, whole=score),
            }
        )
    return out


def tokenize_entry(doc: TextDocument, tok, config) -> dict:
    """:func:`tokenize_entries` of one document."""
    return tokenize_entries([doc], tok, config)[0]
