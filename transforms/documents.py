"""The records every step speaks: a text document before tokenization, and a reject.

A *document* is one book or one whole repository. After tokenization it is a numpy int32
array of ``n_tokens`` ids (separators and the end-of-text token included); it is then cut into
*pieces* (windows of at most ``seq_len`` tokens) that are packed into *samples*.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import numpy as np

BOOK = "book"
CODE = "code"
KINDS = (BOOK, CODE)


def compact_reduce(record) -> tuple:
    """``__reduce__`` for a record dataclass that runners shuffle, one per document, inside
    the tokenize step's batches (a ``TokenizedDocument``, a ``DocInfo``): its fields' values
    in order, a plain numeric numpy array as ``(dtype, shape, bytes)``. Beam pickles each such
    record that crosses a stage, and numpy's own pickling of the few small arrays a record
    holds was most of the cost: 23 us a round trip of a short record's ``TokenizedDocument``,
    14 us this way (and 747 bytes -> 299). Arrays come back writable, as numpy's unpickling
    gives them. Any other value (an object or structured array, a masked array) is pickled as
    it always was."""
    import numpy as np

    values, arrays = [], []
    for i, name in enumerate(_field_names(type(record))):
        value = getattr(record, name)
        if type(value) is np.ndarray and not value.dtype.hasobject and value.dtype.names is None:
            value = (value.dtype.str, value.shape, bytearray(value.tobytes()))
            arrays.append(i)
        values.append(value)
    return _rebuild, (type(record), tuple(values), tuple(arrays))


def _rebuild(cls, values: tuple, arrays: tuple[int, ...] = ()):
    """The record :func:`compact_reduce` took apart (no ``__init__``: the values are its own);
    ``arrays``: the positions of the values that are arrays as bytes. A field the values
    predate (the class gained it since they were pickled) gets its default."""
    import numpy as np

    names = _field_names(cls)
    if len(values) > len(names):
        raise ValueError(f"{cls.__name__}: {len(values)} values for {len(names)} fields")
    record = object.__new__(cls)
    state = record.__dict__
    state.update(zip(names, values, strict=False))
    for i in arrays:
        dtype, shape, data = values[i]
        state[names[i]] = np.frombuffer(data, dtype=dtype).reshape(shape)
    if len(values) < len(names):
        for f in fields(cls)[len(values) :]:
            if f.default is not MISSING:
                state[f.name] = f.default
            elif f.default_factory is not MISSING:
                state[f.name] = f.default_factory()
            else:
                raise ValueError(f"{cls.__name__}: no value for {f.name}, which has no default")
    return record


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


@dataclass
class TextDocument:
    """A document as read from disk, before tokenization.

    ``texts`` are the text parts in order. A book has one part. A repository has one part per
    file, and ``files`` names them (repository-relative, POSIX separators), so the tokenizer can
    put a file header before each part.
    """

    doc_id: str
    kind: str
    origin: str
    texts: list[str]
    files: list[str] = field(default_factory=list)
    title: str = ""  # repository name or book title, used in the repository header
    dependency_edges: int = 0  # resolved import edges between the files (code)
    cycle_files: int = 0  # files on an import cycle (code)
    unparsed_files: int = 0  # source files whose imports were read by the fallback regex
    chapters: list[int] = field(default_factory=list)  # book: character offsets of headings
    language: str = ""  # book: declared language; code: the most common source language
    source: str = ""  # the input a record came from (records files); "" = the document itself

    @property
    def n_bytes(self) -> int:
        return sum(len(t.encode("utf-8")) for t in self.texts)


@dataclass(frozen=True)
class Reject:
    """An input that did not become (part of) a document, and why. One line of rejects.jsonl."""

    path: str
    reason: str
    detail: str = ""

    def to_json_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason, "detail": self.detail}


class RejectError(Exception):
    """Raised by readers for an input that must be rejected; carries the reason string."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class TokenizedDocument:
    """A document after tokenization. Its ``n_tokens`` int32 ids are not carried along: they
    sit in the run's token store at ``tokens_path`` (raw little-endian int32), and only the
    shard writer reads them back, slice by slice, so what the runner shuffles and holds stays
    small however large the corpus."""

    doc_id: str
    kind: str
    origin: str
    files: list[str]
    n_bytes: int
    content_sha256: str
    n_tokens: int
    tokens_path: str
    tokens_offset: int = 0  # where its ids begin in that file (a batch's file: several documents)
    language: str = ""
    source: str = ""
    dependency_edges: int = 0
    cycle_files: int = 0
    unparsed_files: int = 0
    chapters: np.ndarray | None = None  # token offsets of chapter / file starts
    starts: np.ndarray | None = None  # the document's windows (see transforms/samples/windowing.py)
    lengths: np.ndarray | None = None
    score: float | None = None  # long-dependency score (transforms/code/dependency_score.py)
    window_scores: np.ndarray | None = None  # each window's score (NaN: too short to score)
    cache_key: str | None = None  # --incremental: the cache entry it came from or went to
    reused: bool = False  # --incremental: loaded from the cache instead of tokenized

    __reduce__ = compact_reduce  # pickled compactly: Beam pickles one a document per stage

    @classmethod
    def from_text(cls, doc: TextDocument, **tokenized) -> TokenizedDocument:
        """The tokenized form of ``doc``: every field the two records share is copied (so a
        new document attribute needs adding once, to both records), ``tokenized`` gives the
        rest (``n_tokens``, ``tokens_path``, windows, score...) and wins over a shared name."""
        shared = set(_field_names(cls)).intersection(_field_names(TextDocument))
        values = {name: getattr(doc, name) for name in shared}
        values["files"] = list(doc.files)
        values["n_bytes"] = doc.n_bytes
        values.update(tokenized)  # e.g. chapters: character offsets -> token offsets
        return cls(**values)

    def segment_score(self, start: int, length: int) -> float | None:
        """The dependency score of ``length`` tokens from ``start`` where this record knows it
        (the whole document, or one of its windows as the tokenize step scored them); None
        where it does not (the shard writer scores such a segment) or the window is too short
        to score."""
        import numpy as np

        if start == 0 and length == self.n_tokens:
            return self.score
        if self.window_scores is None or self.starts is None or self.lengths is None:
            return None
        i = int(np.searchsorted(self.starts, start))
        if i == len(self.starts) or self.starts[i] != start or self.lengths[i] != length:
            return None
        score = float(self.window_scores[i])
        return None if np.isnan(score) else score


class SegmentRef(NamedTuple):
    """Where one segment of a sample comes from: ``length`` ids of document ``doc_id`` from
    ``start``, read from the token store file ``tokens_path`` (the document's ids begin at
    ``tokens_offset`` there); ``score`` is its dependency score where the tokenize step
    computed it (the whole document, or one of its windows; else None and the writer scores
    it); ``context``: its first tokens that repeat the previous window's (``--overlap``)."""

    sample: int
    slot: int
    doc_id: str
    start: int
    length: int
    tokens_path: str
    score: float | None = None
    context: int = 0  # leading tokens that only give context (the --overlap repeat)
    tokens_offset: int = 0
