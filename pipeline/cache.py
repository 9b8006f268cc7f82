"""``--incremental``: tokenized documents cached in ``OUT/.cache/tokens/`` between runs.

A document's entry is keyed by the SHA-256 of its text (``content_sha256``: every file name
and file text, after reading, stripping and duplicate removal) together with everything that
shapes its tokens and windows: tokenizer hash, ``--seq-len``, ``--overlap``,
``--boundary-slack`` and the pipeline version. An unchanged document is therefore loaded
instead of tokenized, windowed and scored, and the output is byte-identical to a full run
(tested). Inputs are still read every run: reading is what tells whether the text changed.

Entries are ``.npz`` files (loaded with ``allow_pickle=False``), written under a temporary name
and renamed, so a killed run leaves no half entry; a damaged entry counts as a miss. After a
successful run the driver deletes the entries that run did not use.
"""

from __future__ import annotations

import contextlib
import logging
import uuid

from apache_beam.io.filesystems import FileSystems

from pipeline import entries
from pipeline.entries import document_key, entry_key  # noqa: F401  (the cache's keys)
from schemas.layout import CACHE_DIR, TOKENS_DIR

_LOG = logging.getLogger(__name__)


def cache_dir(out: str) -> str:
    return FileSystems.join(out, CACHE_DIR, TOKENS_DIR)


def _path(directory: str, key: str) -> str:
    return FileSystems.join(directory, entries.file_name(key))


def has(directory: str, key: str) -> bool:
    return FileSystems.exists(_path(directory, key))


def load(directory: str, key: str) -> dict | None:
    path = _path(directory, key)
    try:
        if not FileSystems.exists(path):
            return None
        with FileSystems.open(path) as fh:
            return entries.decode(fh.read())
    except Exception as err:  # a damaged entry is a miss, never a failure
        _LOG.warning("ignoring damaged cache entry %s: %s", path, err)
        return None


def store(directory: str, key: str, **entry) -> None:
    path = _path(directory, key)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    if not FileSystems.exists(directory):
        with contextlib.suppress(OSError):  # another worker made it first
            FileSystems.mkdirs(directory)
    with FileSystems.create(tmp) as fh:
        fh.write(entries.encode(entry))
    FileSystems.rename([tmp], [path])


def keys(directory: str) -> set[str]:
    """The entries present now."""
    if not FileSystems.exists(directory):
        return set()
    found = FileSystems.match([FileSystems.join(directory, "*.npz")])[0].metadata_list
    return {m.path.rsplit("/", 1)[-1][:-4] for m in found}


def prune(directory: str, used: set[str]) -> int:
    """Delete entries (and stray temporary files) not in ``used``; returns how many."""
    if not FileSystems.exists(directory):
        return 0
    found = FileSystems.match([FileSystems.join(directory, "*")])[0].metadata_list
    stale = [
        m.path
        for m in found
        if not (m.path.endswith(".npz") and m.path.rsplit("/", 1)[-1][:-4] in used)
    ]
    if stale:
        FileSystems.delete(stale)
    return len(stale)
