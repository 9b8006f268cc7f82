"""The records every step speaks: a text document before tokenization, and a reject.

A *document* is one book or one whole repository. After tokenization it is a numpy int32
array of ``n_tokens`` ids (separators and the end-of-text token included); it is then cut into
*pieces* (windows of at most ``seq_len`` tokens) that are packed into *samples*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

BOOK = "book"
CODE = "code"
KINDS = (BOOK, CODE)


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
    """A document after tokenization: ``tokens`` is an int32 numpy array of ``n_tokens`` ids."""

    doc_id: str
    kind: str
    origin: str
    files: list[str]
    n_bytes: int
    content_sha256: str
    tokens: np.ndarray

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])
