"""Early tokenization: encode a document in a background thread as soon as it is read, so the
tokenizer works while the read step goes on with the next files (issue 20).

Why: with duplicate removal on (the default) the read step (reading, decoding, Python's ``ast``
for the dependency order, MinHash signatures) must finish before the tokenize step starts, and
it runs on one core. The Rust tokenizer releases the GIL while it encodes, so one background
thread gets it going on the cores the read step leaves idle.

How, without changing a byte of the output:

- The read step hands each document of at least ``EARLY_MIN_CHARS`` characters
  (``transforms/samples/entries.py``) to :func:`submit`
  (``EarlyTokenizer`` is one per worker process, made on first use). The background thread runs
  the tokenize step's own function (``transforms.samples.entries.tokenize_entry``) and writes
  the entry (ids, chapters, windows, score) to ``STAGING/early/`` in the ``--incremental``
  cache's format, keyed the same way (content SHA-256 + tokenizer + settings).
- The tokenize step asks :func:`take` first: an entry for the same key, waited for if it is
  still being made in this process, else read from disk (written by another worker), else
  ``None`` and the step tokenizes as before. A document that duplicate removal changed has a
  new key and is tokenized again; one it dropped leaves an unused entry, removed with the
  staging folder.
- At most ``DEPTH`` documents wait for the thread; the read step blocks rather than hold more,
  so memory stays flat in the corpus size (entries live on disk, not in memory).

Off for ``--no-dedup`` (read and tokenize are then one fused stage: the tokenize step would
wait for each document at once) and for a staging folder on a remote filesystem (an extra write
and read of every document's ids over the network cost more than they save). Beam 2.77's
DaskRunner applies each step to a whole partition in turn, so there a worker reads its whole
group before it tokenizes any of it, fused or not; turning the early tokenizer on for
``--no-dedup`` there was measured (session 18, 16 cores, 300 MB) and left off: one worker,
82.0 -> 71.2 s (another loan), but 16 workers, 26.8 -> 36.7 s (paired, 2 rounds) with 150
CPU-seconds more, a second busy thread a worker on cores already all busy.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from apache_beam.io.filesystems import FileSystems

from pipeline import cache, head_start
from pipeline.remote import is_remote
from schemas.layout import EARLY_DIR
from transforms.documents import TextDocument
from transforms.samples.entries import content_sha256, tokenize_entry, worth_tokenizing_early

_LOG = logging.getLogger("longctx")

DEPTH = 2  # documents queued for the background thread at most


def enabled(config, staging: str) -> bool:
    return bool(config.dedup) and not is_remote(staging)


class EarlyTokenizer:
    """One per process: a single background thread that tokenizes what the read step read."""

    def __init__(
        self, config, staging: str, cache_dir: str | None = None, head_start: str | None = None
    ):
        from transforms.samples.tokenize import load_tokenizer

        self.config, self.staging, self.cache_dir = config, staging, cache_dir
        self.head_start = head_start  # the head start's folder (pipeline/head_start.py)
        self.directory = FileSystems.join(staging, EARLY_DIR)
        self.tok = load_tokenizer(config.tokenizer, config.trust_remote_code)
        self._pool: ThreadPoolExecutor | None = None  # made on submit, ended by drain
        self._slots = threading.BoundedSemaphore(DEPTH)
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()

    def key(self, sha: str) -> str:
        return cache.document_key(sha, self.tok, self.config)

    def submit(self, doc: TextDocument) -> None:
        """Start tokenizing ``doc`` (blocks while ``DEPTH`` documents wait)."""
        key = self.key(content_sha256(doc))
        if self.cache_dir and cache.has(self.cache_dir, key):
            return  # --incremental: the tokenize step loads it from the cache
        if self.head_start and head_start.has_entry(self.head_start, key):
            return  # tokenized before the run's workers began: the tokenize step takes it
        with self._lock:
            if key in self._pending:
                return
        self._slots.acquire()
        with self._lock:  # drain() swaps the pool out under the same lock
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="longctx-early")
            fut = self._pool.submit(self._make, doc, key)
            self._pending[key] = fut
        fut.add_done_callback(lambda _: self._slots.release())

    def _make(self, doc: TextDocument, key: str) -> bool:
        try:
            cache.store(self.directory, key, **tokenize_entry(doc, self.tok, self.config))
            return True
        except Exception as err:  # the tokenize step will do it again, and report a failure
            _LOG.debug("early tokenization of %s failed: %s", doc.doc_id, err)
            return False

    def drain(self) -> None:
        """Wait for every document handed over (end of a read bundle), and end the thread: a
        long-lived worker process (a Dask worker) keeps no idle thread per run."""
        with self._lock:
            futures = list(self._pending.values())
            pool, self._pool = self._pool, None
        for fut in futures:
            fut.result()
        if pool is not None:
            pool.shutdown(wait=True)

    def take(self, key: str) -> dict | None:
        """The entry for ``key`` (waited for if it is being made here), removed from disk once
        read; ``None`` if there is none."""
        with self._lock:
            fut = self._pending.pop(key, None)
        if fut is not None and not fut.result():
            return None
        return _load_and_remove(self.directory, key)


_INSTANCES: dict[str, EarlyTokenizer] = {}  # staging folder (one per run) -> its tokenizer
_INSTANCES_LOCK = threading.Lock()


def submit(
    config, staging: str, cache_dir: str | None, head_start: str | None, doc: TextDocument
) -> None:
    """Hand ``doc`` to this process's background tokenizer for the run (made on first use);
    ``cache_dir``: the ``--incremental`` cache, ``head_start``: the head start's folder, whose
    entries need no early tokenization."""
    if not worth_tokenizing_early(doc):
        return
    with _INSTANCES_LOCK:
        found = _INSTANCES.get(staging)
        if found is None:
            found = _INSTANCES[staging] = EarlyTokenizer(config, staging, cache_dir, head_start)
    found.submit(doc)


def drain(staging: str) -> None:
    with _INSTANCES_LOCK:
        found = _INSTANCES.get(staging)
    if found is not None:
        found.drain()


def take(staging: str, key: str, head_start_folder: str | None = None) -> dict | None:
    """The early entry for cache key ``key``: waited for if this process is making it, else
    read from disk (another worker's, or the head start's), else ``None``."""
    with _INSTANCES_LOCK:
        found = _INSTANCES.get(staging)
    entry = (
        found.take(key)
        if found is not None
        else _load_and_remove(FileSystems.join(staging, EARLY_DIR), key)
    )
    if entry is None and head_start_folder:
        entry = _load_and_remove(head_start.entries(head_start_folder), key)
    return entry


def _load_and_remove(directory: str, key: str) -> dict | None:
    entry = cache.load(directory, key) if FileSystems.exists(directory) else None
    if entry is not None:
        with contextlib.suppress(Exception):
            FileSystems.delete([FileSystems.join(directory, f"{key}.npz")])
    return entry
