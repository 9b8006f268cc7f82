"""Column definitions of the output folder (docs/contracts.md sections 2-3).

A shard row is one training sample of at most ``seq_len`` tokens made of one or more
*segments*; segment ``i`` holds ``seq_lengths[i]`` tokens cut from document ``doc_ids[i]``
starting at token offset ``doc_starts[i]``::

    input_ids   [ 11 12 13 | 21 22 | 31 32 33 34 ]     (one sample, seq_len >= 9)
    seq_lengths [ 3, 2, 4 ]                             sum == len(input_ids)
    doc_ids     [ "book/a", "code/b", "book/c" ]
    doc_starts  [ 0, 0, 65532 ]                         offset inside each document
"""

import pyarrow as pa

SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("seq_lengths", pa.list_(pa.int32()), nullable=False),
        pa.field("doc_ids", pa.list_(pa.string()), nullable=False),
        pa.field("doc_starts", pa.list_(pa.int64()), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        # token-weighted mean of the segments' long-dependency scores; null when no segment is
        # long enough to score (transforms/code/dependency_score.py)
        pa.field("dependency_score", pa.float32(), nullable=True),
        # per segment: how many of its first tokens repeat the previous window of the same
        # document (--overlap K: K for every window after a document's first, else 0). They
        # give context only; train.data's collator gives them no label, so every token of a
        # document is learned exactly once.
        pa.field("context_tokens", pa.list_(pa.int32()), nullable=False),
    ]
)

DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # "book" or "code"
        pa.field("origin", pa.string(), nullable=False),  # path of the book or repository
        pa.field("n_tokens", pa.int64(), nullable=False),  # incl. separators and end-of-text
        pa.field(
            "n_bytes", pa.int64(), nullable=False
        ),  # UTF-8 bytes of the text that was tokenized
        pa.field(
            "files", pa.list_(pa.string()), nullable=False
        ),  # code: file order in the document
        pa.field("content_sha256", pa.string(), nullable=False),
        pa.field("n_segments", pa.int32(), nullable=False),  # pieces the document was cut into
        pa.field("language", pa.string(), nullable=False),  # book: declared; code: main language
        pa.field("dependency_edges", pa.int32(), nullable=False),  # code: resolved import edges
        pa.field("cycle_files", pa.int32(), nullable=False),  # code: files on an import cycle
        pa.field("unparsed_files", pa.int32(), nullable=False),  # code: imports read by regex
        pa.field("chapter_starts", pa.list_(pa.int64()), nullable=False),  # token offsets
        pa.field("dependency_score", pa.float32(), nullable=True),  # null: too short to score
    ]
)

# rejects.jsonl: one JSON object per line with exactly these keys.
REJECT_FIELDS = ("path", "reason", "detail")
