"""Tokenize step: text documents -> tokenized documents (ids in the token store, windows,
long-dependency score), reusing the ``--incremental`` cache where the text is unchanged."""

from __future__ import annotations

import hashlib
import sys
import time

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline import token_store
from pipeline.steps.common import NAMESPACE
from transforms.code.dependency_score import dependency_score
from transforms.documents import TextDocument, TokenizedDocument


def content_sha256(doc: TextDocument) -> str:
    h = hashlib.sha256()
    for name, text in zip(doc.files or [""] * len(doc.texts), doc.texts, strict=True):
        h.update(
            name.encode("utf-8", "replace") + b"\0" + text.encode("utf-8", "surrogatepass") + b"\0"
        )
    return h.hexdigest()


class TokenizeFn(beam.DoFn):
    """TextDocument -> TokenizedDocument; the tokenizer is loaded once per worker in ``setup``.

    ``config`` is the run's BuildConfig (tokenizer, seq_len, overlap, slack); ``cache_dir`` the
    ``--incremental`` cache or None."""

    def __init__(self, config, staging: str, cache_dir: str | None = None, progress=False):
        self.config, self.staging, self.cache_dir = config, staging, cache_dir
        self.progress = progress
        self.tok = None
        self._started = self._shown = 0.0
        self._docs = self._tokens = 0

    def setup(self):
        from transforms.samples.tokenize import load_tokenizer

        self.tok = load_tokenizer(self.config.tokenizer, self.config.trust_remote_code)

    def process(self, doc: TextDocument):
        sha = content_sha256(doc)
        key, entry = self._cached(sha)
        reused = entry is not None
        if entry is None:
            entry = self._tokenize(doc)
            if self.cache_dir:
                from pipeline import cache

                cache.store(self.cache_dir, key, **entry)
        Metrics.counter(NAMESPACE, "documents_reused" if reused else "documents_tokenized").inc()
        n = int(entry["tokens"].shape[0])
        tokens_path = token_store.path_for(self.staging, doc.doc_id)
        token_store.store(tokens_path, entry["tokens"])
        Metrics.counter(NAMESPACE, f"documents_{doc.kind}").inc()
        Metrics.counter(NAMESPACE, f"tokens_{doc.kind}").inc(n)
        Metrics.distribution(NAMESPACE, f"doc_tokens_{doc.kind}").update(n)
        if doc.unparsed_files:
            Metrics.counter(NAMESPACE, "warnings_unparsed_source_files").inc(doc.unparsed_files)
        if self.progress:
            self._report(n)
        yield TokenizedDocument.from_text(
            doc,
            content_sha256=sha,
            n_tokens=n,
            tokens_path=tokens_path,
            chapters=entry["chapters"],
            starts=entry["starts"],
            lengths=entry["lengths"],
            score=entry["score"],
            cache_key=key,
            reused=reused,
        )

    def _cached(self, sha: str):
        """``(cache key, entry or None)``; ``(None, None)`` without --incremental. A damaged
        entry reads as None: the document is tokenized again (and counted so)."""
        if not self.cache_dir:
            return None, None
        from pipeline import cache

        c = self.config
        key = cache.entry_key(sha, self.tok.sha256, c.seq_len, c.overlap, c.slack)
        return key, cache.load(self.cache_dir, key)

    def _tokenize(self, doc: TextDocument) -> dict:
        from transforms.samples.tokenize import encode_and_window

        c = self.config
        enc, starts, lengths = encode_and_window(
            doc, self.tok, seq_len=c.seq_len, overlap=c.overlap, slack=c.slack
        )
        return {
            "tokens": enc.tokens,
            "chapters": enc.chapters,
            "starts": starts,
            "lengths": lengths,
            "score": dependency_score(enc.tokens),
        }

    def _report(self, n_tokens: int) -> None:
        """A progress line on stderr, at most every 2 s (per worker process)."""
        now = time.time()
        if not self._started:
            self._started = now
        self._docs += 1
        self._tokens += n_tokens
        if now - self._shown >= 2.0:
            self._shown = now
            rate = self._tokens / max(now - self._started, 1e-9)
            print(
                f"\r  tokenized {self._docs:,} documents, {self._tokens:,} tokens "
                f"({rate:,.0f} tokens/s)",
                end="",
                file=sys.stderr,
                flush=True,
            )


class Tokenize(beam.PTransform):
    """TextDocument s -> TokenizedDocument s (one ParDo; the composite names the step)."""

    def __init__(self, config, staging: str, cache_dir: str | None = None, progress=False):
        super().__init__()
        self.fn = TokenizeFn(config, staging, cache_dir, progress)

    def expand(self, texts):
        return texts | "TokenizeDocuments" >> beam.ParDo(self.fn)
