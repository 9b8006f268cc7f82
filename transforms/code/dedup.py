"""Exact and near-duplicate removal across the whole corpus, at the level of files.

An *item* is one file of a repository ``(doc_id, path)`` or one whole book / record
``(doc_id, "")``. Two items are:

- *exact duplicates* when their normalised text is equal (Unicode NFC, every run of whitespace
  made one space, ends stripped): same SHA-256;
- *near duplicates* when the estimated Jaccard similarity of their sets of 24-byte shingles
  (1 in 8 sampled by hash) is at least ``THRESHOLD`` (0.8). The estimate is a 112-value MinHash;
  candidates come from LSH with 14 bands of 8 rows, so a pair at 0.8 is found with
  probability 0.96 and a pair at 0.5 is compared with probability 0.05.

Of each duplicate pair the item with the smaller ``(doc_id, path)`` is kept, the other is left
out and listed in ``rejects.jsonl`` naming the kept copy. Items shorter than ``MIN_CHARS``
(256) normalised characters are never deduplicated, nor is an ``__init__.py`` that holds only
comments (a licence header): an empty package or a licence is not a duplicated library, and
removing it would change a repository's structure.

**Only across documents, by default.** Two files of the *same* repository are never
duplicates of each other (``WITHIN_REPOSITORY = "off"``): a repository's near-identical
modules (two backends, two protocol versions, werkzeug's ``examples/manage-*.py`` scripts at
Jaccard 0.89-0.92) are each imported or run by path, and removing one breaks the structure the
dependency order is built on. What dedup is for, a vendored copy of a library in another repository, is still
found. ``"exact"`` removes true copies inside a repository too; ``"near"`` is the old
behaviour. Pure functions; :mod:`pipeline.steps` wires them through a GroupByKey per LSH band.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

from transforms.documents import Reject, TextDocument
from transforms.inputs.archives import ARCHIVE_SUFFIXES

THRESHOLD = 0.8
MIN_CHARS = 256
WITHIN_REPOSITORY = "off"  # "off" | "exact" | "near": duplicates between files of one document
_COMMENT_LINE = re.compile(r"^\s*(#.*)?$", re.M)
SHINGLE = 24
N_PERM = 112
BANDS, ROWS = 14, 8
_K = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], np.uint64)
_MIX = np.uint64(0x9E3779B97F4A7C15)
_rng = np.random.default_rng(20261124)
_A = _rng.integers(1, 2**63, N_PERM, dtype=np.uint64) | np.uint64(1)
_B = _rng.integers(0, 2**63, N_PERM, dtype=np.uint64)


@dataclass
class Signature:
    doc_id: str
    path: str
    exact: str  # hex SHA-256 of the normalised text
    minhash: np.ndarray | None  # uint32[N_PERM], None for short items

    @property
    def key(self) -> tuple[str, str]:
        return (self.doc_id, self.path)

    def where(self) -> str:
        return f"{self.doc_id}!{self.path}" if self.path else self.doc_id


def normalise(text: str) -> str:
    """>>> normalise("  a\\t b\\n\\n c ")
    'a b c'
    """
    return " ".join(
        unicodedata.normalize("NFC", text).split()
    )  # str.split: the same \\s runs, 2x faster


def shingle_hashes(data: bytes) -> np.ndarray:
    """A 64-bit hash of every 24-byte shingle of ``data`` (one per byte position).

    The shingle at ``i`` is three little-endian 8-byte words (at ``i``, ``i+8``, ``i+16``),
    multiplied by odd constants, combined and mixed: about ten vectorised passes over the
    positions, where a byte-by-byte polynomial took 48.
    """
    if len(data) < SHINGLE:
        data = data + bytes(SHINGLE - len(data))
    m = len(data)
    n = m - SHINGLE + 1
    words = np.empty(m - 7, np.uint64)  # the 8-byte word starting at every byte
    for r in range(8):
        k = (m - r) // 8
        words[r::8] = np.frombuffer(data, dtype="<u8", count=k, offset=r)[: len(words[r::8])]
    with np.errstate(over="ignore"):
        h = words[:n] * _K[0]
        h ^= words[8 : 8 + n] * _K[1]
        h += words[16 : 16 + n] * _K[2]
        h ^= h >> np.uint64(29)
        h *= _MIX
        h ^= h >> np.uint64(32)
    return h


def minhash(data: bytes) -> np.ndarray:
    """MinHash (uint32[N_PERM]) of the sampled 24-byte shingles of ``data``."""
    h = shingle_hashes(data)
    with np.errstate(over="ignore"):
        sample = h[(h & np.uint64(7)) == 0]  # repeats do not change a minimum: no unique()
        if sample.size == 0:
            sample = h[:1]
        mins = np.full(N_PERM, np.iinfo(np.uint64).max, np.uint64)
        for lo in range(0, sample.size, 8192):
            x = sample[lo : lo + 8192]
            vals = _A[:, None] * x[None, :] + _B[:, None]
            mins = np.minimum(mins, vals.min(axis=1))
    return (mins >> np.uint64(32)).astype(np.uint32)


def signatures(doc: TextDocument) -> list[Signature]:
    """One signature per item of a document (each file of a repository, or the whole text)."""
    paths = doc.files if doc.files and len(doc.files) == len(doc.texts) else [""]
    texts = doc.texts if paths != [""] else ["".join(doc.texts)]
    out = []
    for path, text in zip(paths, texts, strict=True):
        norm = normalise(text).encode("utf-8", "surrogatepass")
        exact = hashlib.sha256(norm).hexdigest()
        marker = (
            posixpath.basename(path) == "__init__.py" and not _COMMENT_LINE.sub("", text).strip()
        )
        sig = minhash(norm) if len(norm) >= MIN_CHARS and not marker else None
        out.append(Signature(doc.doc_id, path, exact, sig))
    return out


def band_keys(sig: Signature) -> list[str]:
    """The buckets an item falls in: its exact hash, and one per LSH band."""
    if sig.minhash is None:
        return []
    keys = [f"x:{sig.exact}"]
    for i in range(BANDS):
        band = sig.minhash[i * ROWS : (i + 1) * ROWS].tobytes()
        keys.append(f"b{i}:{hashlib.blake2b(band, digest_size=8).hexdigest()}")
    return keys


def similarity(a: Signature, b: Signature) -> float:
    if a.exact == b.exact:
        return 1.0
    return float(np.mean(a.minhash == b.minhash))


def duplicates_in_bucket(
    members: list[Signature], within_repository: str = WITHIN_REPOSITORY
) -> list[tuple[Signature, Signature, float]]:
    """``(dropped, kept, similarity)`` for every member that duplicates an earlier one;
    ``within_repository`` says which pairs inside one document count (see the module)."""
    if within_repository not in ("off", "exact", "near"):
        raise ValueError(f"within_repository is off, exact or near, not {within_repository!r}")
    members = sorted({m.key: m for m in members}.values(), key=lambda m: m.key)
    out = []
    for i, m in enumerate(members):
        for earlier in members[:i]:
            if earlier.doc_id == m.doc_id and (
                within_repository == "off"
                or (within_repository == "exact" and earlier.exact != m.exact)
            ):
                continue  # same document: kept unless the setting says otherwise
            sim = similarity(m, earlier)
            if sim >= THRESHOLD:
                out.append((m, earlier, sim))
                break
    return out


def remove_items(
    doc: TextDocument, drops: list[tuple[str, str, float]]
) -> tuple[TextDocument | None, list[Reject]]:
    """Leave out a document's duplicate items; ``drops`` are ``(path, kept_where, sim)``."""
    by_path = {}
    for path, kept, sim in drops:
        if path not in by_path or kept < by_path[path][0]:
            by_path[path] = (kept, sim)
    rejects = []

    def reject(path: str) -> Reject:
        kept, sim = by_path[path]
        what = "exact duplicate" if sim >= 1.0 else f"near duplicate (Jaccard ~{sim:.2f})"
        archive = doc.origin.lower().endswith(ARCHIVE_SUFFIXES)
        where = f"{doc.origin}{'!' if archive else '/'}{path}" if path else doc.origin
        return Reject(where, "duplicate", f"{what} of {kept}, which is kept")

    if "" in by_path or not doc.files:
        return None, [reject("")]
    keep = [i for i, f in enumerate(doc.files) if f not in by_path]
    rejects = [reject(f) for f in doc.files if f in by_path]
    if not keep:
        rejects.append(Reject(doc.origin, "empty", "every file duplicates a file kept elsewhere"))
        return None, rejects
    doc.texts = [doc.texts[i] for i in keep]
    doc.files = [doc.files[i] for i in keep]
    return doc, rejects
