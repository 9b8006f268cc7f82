"""Tokenize step: text documents -> tokenized documents (ids in the token store, windows,
long-dependency score), reusing the ``--incremental`` cache where the text is unchanged."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline import token_store
from pipeline.steps import early
from pipeline.steps.common import NAMESPACE
from transforms.code.dependency_score import window_scores
from transforms.documents import TextDocument, TokenizedDocument
from transforms.samples.entries import content_sha256, tokenize_entries, worth_tokenizing_early

_LOG = logging.getLogger("longctx")

# Documents not found in the cache nor made early are encoded in batches of at most this many
# documents or characters: one tokenizer call for many short records (JSONL, Parquet, HF rows)
# instead of one each (4,000 records of 2 KB: 0.55 s in 4,000 calls, 0.20 s in batches of 256).
BATCH_DOCS = 256
BATCH_CHARS = 1 << 20
# Documents reused from the cache or made early wait to go on together, their ids stored in
# one file of the token store, up to BATCH_DOCS documents or this many ids (4 MiB)
READY_TOKENS = 1 << 20


class TokenizeFn(beam.DoFn):
    """TextDocument -> batches of TokenizedDocument (a list: the documents of one tokenizer
    call, whose ids share a file of the token store, or a single document); the tokenizer is
    loaded once per worker in ``setup``.

    The batch travels on as one element, so the steps after this one (the plan's collect, the
    join with the plan, the cut) handle one element per batch of short records instead of one
    per record: each element costs the runner ~10-60 us at every step it crosses.

    ``config`` is the run's BuildConfig (tokenizer, seq_len, overlap, slack); ``cache_dir`` the
    ``--incremental`` cache or None."""

    def __init__(
        self,
        config,
        staging: str,
        cache_dir: str | None = None,
        progress=None,
        early=False,
        batch=True,
        head_start: str | None = None,
    ):
        self.config, self.staging, self.cache_dir = config, staging, cache_dir
        self.head_start = head_start  # the head start's folder (pipeline/head_start.py)
        self.progress = progress  # None, or Progress(total_bytes, tty)
        self.early = early  # the read step tokenizes early (pipeline/steps/early.py)
        # batch documents across process() calls, the last batch emitted by finish_bundle;
        # off for runners that drop finish_bundle's outputs (Beam 2.77's DaskRunner)
        self.batch = batch
        self.tok = None
        self._started = self._shown = 0.0
        self._docs = self._tokens = self._bytes = 0

    def setup(self):
        from transforms.samples.tokenize import load_tokenizer

        self.tok = load_tokenizer(self.config.tokenizer, self.config.trust_remote_code)

    def start_bundle(self):
        self._batch: list[tuple[TextDocument, str, str | None]] = []
        self._batch_chars = 0
        # found in the cache or made early: (doc, sha, key, entry, reused), and their ids
        self._ready: list[tuple] = []
        self._ready_tokens = 0

    def process(self, doc: TextDocument):
        """Documents found in the cache or made early go on in lists (``BATCH_DOCS`` /
        ``READY_TOKENS``: :meth:`_ready_one`); the others wait in a batch encoded with one
        tokenizer call (``BATCH_DOCS`` / ``BATCH_CHARS``); both flushed when full and at the
        end of the bundle."""
        sha = content_sha256(doc)
        key, entry = self._cached(sha)
        if entry is not None:
            yield from self._ready_one((doc, sha, key, entry, True))
            return
        entry = self._early(doc, sha, key)
        if entry is not None:
            self._store_in_cache(key, entry)
            yield from self._ready_one((doc, sha, key, entry, False))
            return
        self._batch.append((doc, sha, key))
        self._batch_chars += sum(len(t) for t in doc.texts)
        full = len(self._batch) >= BATCH_DOCS or self._batch_chars >= BATCH_CHARS
        if full or not self.batch:
            yield from self._flush()

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.timestamp import MIN_TIMESTAMP
        from apache_beam.utils.windowed_value import WindowedValue

        for out in (*self._flush(), *self._flush_ready()):
            yield WindowedValue(out, MIN_TIMESTAMP, [GlobalWindow()])

    def _ready_one(self, item: tuple):
        """A document made without a tokenizer call here, ``(doc, sha, key, entry, reused)``:
        it goes on in a list with others like it, their ids in one file (an ``--incremental``
        rerun of many short records: one element and one file a list, not a document). It
        goes alone where the runner drops what ``finish_bundle`` emits, and when it holds
        ``READY_TOKENS`` ids or more (what waits goes first: the lists keep their order)."""
        n = int(item[3]["tokens"].shape[0])
        if n >= READY_TOKENS or not self.batch:  # alone, in a file of its own: no copy
            yield from self._flush_ready()
            yield self._emit_batch([item])
            return
        self._ready.append(item)
        self._ready_tokens += n
        if len(self._ready) >= BATCH_DOCS or self._ready_tokens >= READY_TOKENS:
            yield from self._flush_ready()

    def _flush_ready(self):
        ready, self._ready, self._ready_tokens = self._ready, [], 0
        if ready:
            yield self._emit_batch(ready)

    def _flush(self):
        """The batch encoded with one tokenizer call, its ids stored in one file of the token
        store (each document's run of it: its offset), where it holds more than one; yields
        the batch's TokenizedDocument s as one list."""
        batch, self._batch, self._batch_chars = self._batch, [], 0
        if not batch:
            return
        entries = tokenize_entries([doc for doc, _, _ in batch], self.tok, self.config)
        made = []
        for (doc, sha, key), entry in zip(batch, entries, strict=True):
            self._store_in_cache(key, entry)
            made.append((doc, sha, key, entry, False))
        yield self._emit_batch(made)

    def _emit_batch(self, items: list[tuple]) -> list[TokenizedDocument]:
        """``(doc, sha, key, entry, reused)`` s -> their TokenizedDocument s, the ids of more
        than one stored in one file of the token store (each document's run: its offset)."""
        stored = [None] * len(items)
        if len(items) > 1:
            path = token_store.batch_path(self.staging, [item[0].doc_id for item in items])
            offsets = token_store.store_batch(path, [item[3]["tokens"] for item in items])
            stored = [(path, offset) for offset in offsets]
        return [
            self._emit(doc, sha, key, entry, reused=reused, stored=where)
            for (doc, sha, key, entry, reused), where in zip(items, stored, strict=True)
        ]

    def _store_in_cache(self, key, entry: dict) -> None:
        if self.cache_dir:
            from pipeline import cache

            cache.store(self.cache_dir, key, **entry)

    def _emit(self, doc: TextDocument, sha: str, key, entry: dict, *, reused: bool, stored=None):
        """Store the ids (where ``stored``, ``(path, offset)``, does not say where a batch's
        file holds them already), count, report progress; the TokenizedDocument that goes on."""
        Metrics.counter(NAMESPACE, "documents_reused" if reused else "documents_tokenized").inc()
        n = int(entry["tokens"].shape[0])
        if stored is None:
            tokens_path, tokens_offset = token_store.path_for(self.staging, doc.doc_id), 0
            token_store.store(tokens_path, entry["tokens"])
        else:
            tokens_path, tokens_offset = stored
        Metrics.counter(NAMESPACE, f"documents_{doc.kind}").inc()
        Metrics.counter(NAMESPACE, f"tokens_{doc.kind}").inc(n)
        Metrics.distribution(NAMESPACE, f"doc_tokens_{doc.kind}").update(n)
        if doc.unparsed_files:
            Metrics.counter(NAMESPACE, "warnings_unparsed_source_files").inc(doc.unparsed_files)
        if self.progress:
            self._report(n, doc.n_bytes)
        return TokenizedDocument.from_text(
            doc,
            content_sha256=sha,
            n_tokens=n,
            tokens_path=tokens_path,
            tokens_offset=tokens_offset,
            chapters=entry["chapters"],
            starts=entry["starts"],
            lengths=entry["lengths"],
            score=entry["score"],
            window_scores=entry.get("window_scores"),
            cache_key=key,
            reused=reused,
        )

    def _cached(self, sha: str):
        """``(cache key, entry or None)``; ``(None, None)`` without --incremental. A damaged
        entry reads as None: the document is tokenized again (and counted so)."""
        if not self.cache_dir:
            return None, None
        from pipeline import cache

        key = cache.document_key(sha, self.tok, self.config)
        entry = cache.load(self.cache_dir, key)
        if entry is not None and "window_scores" not in entry:
            # an entry from before the tokenize step scored the windows: scored and stored
            # once now, instead of by the shard writer on every run that reuses it
            entry["window_scores"] = window_scores(
                entry["tokens"], entry["starts"], entry["lengths"], whole=entry["score"]
            )
            cache.store(self.cache_dir, key, **entry)
        return key, entry

    def _early(self, doc: TextDocument, sha: str, key: str | None) -> dict | None:
        """The entry the read step made early for this text, if it did (``early.py``); ``key``:
        the cache key when ``_cached`` made one already."""
        if not ((self.early or self.head_start) and worth_tokenizing_early(doc)):
            return None
        from pipeline import cache

        key = key or cache.document_key(sha, self.tok, self.config)
        entry = early.take(self.staging, key, self.head_start)
        Metrics.counter(NAMESPACE, "documents_early" if entry else "documents_not_early").inc()
        return entry

    def _report(self, n_tokens: int, n_bytes: int) -> None:
        """Progress of this worker: on a terminal a line rewritten at most every 2 s (documents,
        tokens, tokens/s once a second has passed, share of the input bytes, ETA); otherwise an
        INFO log line every 30 s."""
        now = time.time()
        if not self._started:
            self._started = now
        self._docs += 1
        self._tokens += n_tokens
        self._bytes += n_bytes
        every = 2.0 if self.progress.tty else 30.0
        if now - self._shown < every:
            return
        self._shown = now
        line = progress_line(
            self._docs, self._tokens, self._bytes, now - self._started, self.progress.total_bytes
        )
        if self.progress.tty:
            print(f"\r\033[K  {line}", end="", file=sys.stderr, flush=True)
        else:
            _LOG.info("%s", line)


@dataclass(frozen=True)
class Progress:
    total_bytes: int  # input bytes of the run (0: unknown, no ETA)
    tty: bool  # stderr is a terminal: one line rewritten in place


def progress_line(docs: int, tokens: int, done_bytes: int, seconds: float, total: int) -> str:
    """``tokenized 12 documents, 3,100,000 tokens (410,000 tokens/s), 41% of the input, ETA 9s``
    (the rate and ETA only once a second has passed: earlier figures are noise)."""
    line = f"tokenized {docs:,} documents, {tokens:,} tokens"
    if seconds >= 1.0:
        line += f" ({tokens / seconds:,.0f} tokens/s)"
        if total and 0 < done_bytes < total:
            eta = seconds * (total - done_bytes) / done_bytes
            line += f", {done_bytes / total:.0%} of the input, ETA {eta:,.0f}s"
    return line


class Tokenize(beam.PTransform):
    """TextDocument s -> batches (lists) of TokenizedDocument s (one ParDo; the composite
    names the step): see :class:`TokenizeFn`."""

    def __init__(self, config, staging: str, **options):
        """``options``: those of :class:`TokenizeFn` (cache_dir, progress, early, batch,
        head_start)."""
        super().__init__()
        self.fn = TokenizeFn(config, staging, **options)

    def expand(self, texts):
        return texts | "TokenizeDocuments" >> beam.ParDo(self.fn)
