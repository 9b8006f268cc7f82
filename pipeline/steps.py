"""Beam DoFns and composite PTransforms: thin wiring around ``transforms/``.

Graph (labels as they appear in the runner)::

    CreateSources -> ReadSources ------------------------------------> rejects -> WriteRejects
                         | docs                                             ^
                         +-> Signatures -> GroupByBand -> FindDuplicates     |
                         |                                 | (side input)   |
                     RemoveDuplicates <--------------------+ ---------------+
                         |
                     Tokenize (+ windows, score) -> DocInfo -> CollectInfos -> PlanSamples
                         |                                                   | (left out: rejects)
                         +---------------- JoinPlan (CoGroupByKey) ----------+
                                              | segments (keyed by shard)    | documents
                                         GroupByShard -> WriteShards       WriteDocuments

Token ids do not travel through the graph: Tokenize writes each document's ids to the token
store (``pipeline/token_store.py``, in the staging folder) and passes on only its length,
windows and path; JoinPlan and GroupByShard move references ``(start, length, path)``, and
WriteShards reads the slices back while it streams each shard one record batch at a time. What
the runner buffers between steps is therefore a few hundred bytes per piece, whatever the
corpus size.
"""

from __future__ import annotations

import hashlib
import json
import logging

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline import token_store
from pipeline.discover import Source, read_source
from schemas.columns import DOCUMENT_SCHEMA, SAMPLE_SCHEMA
from transforms.dedup import band_keys, duplicates_in_bucket, remove_items, signatures
from transforms.dependency_score import dependency_score
from transforms.documents import Reject, RejectError, TextDocument, TokenizedDocument
from transforms.plan import DocInfo, plan_samples
from transforms.reading import ReadLimits, display_path
from transforms.samples import batches_of_samples, build_document_table, build_sample_table

MAIN = "main"
REJECTS = "rejects"
DOCUMENTS = "documents"
SUMMARY = "summary"


class SplitTagged(beam.PTransform):
    """``(tag, value)`` elements -> ``{tag: PCollection of values}``.

    Used instead of ``ParDo.with_outputs``: Beam 2.77's DaskRunner does not separate tagged
    outputs (they all reach the main output), while Filter + Map works on every runner.
    """

    def __init__(self, *tags: str):
        super().__init__()
        self.tags = tags

    def expand(self, pcoll):
        return {
            tag: pcoll
            | f"Only{tag.capitalize()}" >> beam.Filter(lambda kv, t=tag: kv[0] == t)
            | f"Untag{tag.capitalize()}" >> beam.Map(lambda kv: kv[1])
            for tag in self.tags
        }


NAMESPACE = "longctx"
_LOG = logging.getLogger(__name__)


class ReadSourceFn(beam.DoFn):
    """A source -> TextDocument(s); every file not used goes to the ``rejects`` output."""

    def __init__(self, limits: ReadLimits):
        self.limits = limits

    def process(self, src: Source):
        try:
            for item in read_source(src, self.limits):
                if isinstance(item, Reject):
                    Metrics.counter(NAMESPACE, f"rejects_{item.reason}").inc()
                    yield REJECTS, item
                else:
                    yield MAIN, item
        except RejectError as err:
            Metrics.counter(NAMESPACE, f"rejects_{err.reason}").inc()
            yield REJECTS, Reject(display_path(src.path), err.reason, err.detail)
        except Exception as err:  # one bad input must not end a long run
            _LOG.exception("reading %s failed", src.path)
            Metrics.counter(NAMESPACE, "rejects_read_error").inc()
            yield (
                REJECTS,
                Reject(display_path(src.path), "read_error", f"{type(err).__name__}: {err}"),
            )


def content_sha256(doc: TextDocument) -> str:
    h = hashlib.sha256()
    for name, text in zip(doc.files or [""] * len(doc.texts), doc.texts, strict=True):
        h.update(
            name.encode("utf-8", "replace") + b"\0" + text.encode("utf-8", "surrogatepass") + b"\0"
        )
    return h.hexdigest()


def _bucket_duplicates(element):
    _, members = element
    for dropped, kept, sim in duplicates_in_bucket(list(members)):
        yield dropped.doc_id, (dropped.path, kept.where(), sim)


class RemoveDuplicatesFn(beam.DoFn):
    """Leave out the files (or whole documents) that duplicate a copy kept elsewhere."""

    def process(self, doc: TextDocument, drops: dict):
        found = drops.get(doc.doc_id)
        if not found:
            yield MAIN, doc
            return
        kept, rejects = remove_items(doc, list(found))
        for r in rejects:
            Metrics.counter(NAMESPACE, f"rejects_{r.reason}").inc()
            yield REJECTS, r
        if kept is not None:
            yield MAIN, kept


class TokenizeFn(beam.DoFn):
    """TextDocument -> TokenizedDocument with its windows and long-dependency score.

    The tokenizer is loaded once per worker in ``setup``.
    """

    def __init__(
        self,
        tokenizer_spec: str | None,
        seq_len: int,
        overlap: int,
        slack: int,
        staging: str,
        progress: bool = False,
        trust_remote_code: bool = False,
        cache_dir: str | None = None,
    ):
        self.staging = staging
        self.tokenizer_spec = tokenizer_spec
        self.trust_remote_code = trust_remote_code
        self.cache_dir = cache_dir
        self.seq_len, self.overlap, self.slack = seq_len, overlap, slack
        self.progress = progress
        self.tok = None
        self._started = self._shown = 0.0
        self._docs = self._tokens = 0

    def setup(self):
        from transforms.tokenize import load_tokenizer

        self.tok = load_tokenizer(self.tokenizer_spec, self.trust_remote_code)

    def process(self, doc: TextDocument):
        sha = content_sha256(doc)
        key = entry = None
        if self.cache_dir:
            from pipeline import cache

            key = cache.entry_key(sha, self.tok.sha256, self.seq_len, self.overlap, self.slack)
            entry = cache.load(self.cache_dir, key)
        if entry is None:
            entry = self._tokenize(doc)
            if self.cache_dir:
                cache.store(self.cache_dir, key, **entry)
            Metrics.counter(NAMESPACE, "documents_tokenized").inc()
        else:
            Metrics.counter(NAMESPACE, "documents_reused").inc()
        n = int(entry["tokens"].shape[0])
        tokens_path = token_store.path_for(self.staging, doc.doc_id)
        token_store.store(tokens_path, entry["tokens"])
        Metrics.counter(NAMESPACE, f"documents_{doc.kind}").inc()
        Metrics.counter(NAMESPACE, f"tokens_{doc.kind}").inc(n)
        if self.progress:
            self._report(n)
        Metrics.distribution(NAMESPACE, f"doc_tokens_{doc.kind}").update(n)
        if doc.unparsed_files:
            Metrics.counter(NAMESPACE, "warnings_unparsed_source_files").inc(doc.unparsed_files)
        yield TokenizedDocument(
            doc_id=doc.doc_id,
            kind=doc.kind,
            origin=doc.origin,
            files=list(doc.files),
            n_bytes=doc.n_bytes,
            content_sha256=sha,
            n_tokens=n,
            tokens_path=tokens_path,
            language=doc.language,
            source=doc.source,
            dependency_edges=doc.dependency_edges,
            cycle_files=doc.cycle_files,
            unparsed_files=doc.unparsed_files,
            chapters=entry["chapters"],
            starts=entry["starts"],
            lengths=entry["lengths"],
            score=entry["score"],
            cache_key=key,
        )

    def _tokenize(self, doc: TextDocument) -> dict:
        from transforms.tokenize import encode_and_window

        enc, starts, lengths = encode_and_window(
            doc, self.tok, seq_len=self.seq_len, overlap=self.overlap, slack=self.slack
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
        import sys
        import time

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


def doc_info(d: TokenizedDocument) -> DocInfo:
    """The few numbers of a document the planner needs (no tokens)."""
    return DocInfo(
        doc_id=d.doc_id,
        n_tokens=d.n_tokens,
        kind=d.kind,
        group=f"{d.kind}:{d.language or 'unknown'}",
        source=d.source,
        origin=d.origin,
        score=d.score,
        starts=d.starts,
        lengths=d.lengths,
        cache_key=d.cache_key,
    )


def plan_to_assignments(
    infos, *, seq_len, overlap, samples_per_shard, mix, seed, min_score, fill_gaps=False
):
    """Whole-corpus plan -> ``(doc_id, (n_shards, [Assignment...]))`` per kept document, the
    documents left out as rejects, and a summary for the manifest."""
    plan = plan_samples(
        infos,
        seq_len=seq_len,
        overlap=overlap,
        samples_per_shard=samples_per_shard,
        mix=mix,
        seed=seed,
        min_score=min_score,
        fill_gaps=fill_gaps,
    )
    Metrics.counter(NAMESPACE, "samples").inc(plan.n_samples)
    for doc_id, assignments in plan.by_doc.items():
        yield MAIN, (doc_id, (plan.n_shards, assignments))
    for _doc_id, origin, reason, detail in plan.left_out:
        Metrics.counter(NAMESPACE, f"rejects_{reason}").inc()
        yield REJECTS, Reject(origin, reason, detail)
    keys = sorted({d.cache_key for d in infos if d.cache_key})
    yield SUMMARY, {"packing": plan.packing, "mixture": plan.mixture, "cache_keys": keys}


class CutSegmentsFn(beam.DoFn):
    """(doc_id, {doc, plan}) -> segments keyed by shard, plus the document's metadata row."""

    def process(self, element):
        doc_id, grouped = element
        docs, plans = list(grouped["doc"]), list(grouped["plan"])
        if len(docs) != 1 or len(plans) > 1:
            raise RuntimeError(
                f"document {doc_id}: {len(docs)} token arrays and {len(plans)} plans"
            )
        if not plans:  # left out by --mix / --min-dependency-score: listed in rejects.jsonl
            return
        doc, (n_shards, assignments) = docs[0], plans[0]
        for a in assignments:
            # a reference only: the shard writer reads the ids (and scores a partial piece)
            score = doc.score if a.length == doc.n_tokens else None
            ref = (a.sample, a.slot, doc_id, a.start, a.length, doc.tokens_path, score)
            yield MAIN, ((a.shard, n_shards), ref)
        yield (
            DOCUMENTS,
            {
                "doc_id": doc.doc_id,
                "kind": doc.kind,
                "origin": doc.origin,
                "n_tokens": doc.n_tokens,
                "n_bytes": doc.n_bytes,
                "files": doc.files,
                "content_sha256": doc.content_sha256,
                "n_segments": len(assignments),
                "language": doc.language,
                "dependency_edges": doc.dependency_edges,
                "cycle_files": doc.cycle_files,
                "unparsed_files": doc.unparsed_files,
                "chapter_starts": [] if doc.chapters is None else doc.chapters.tolist(),
                "dependency_score": doc.score,
            },
        )


def shard_name(index: int, count: int, fmt: str) -> str:
    return f"train-{index:05d}-of-{count:05d}.{fmt}"


class WriteShardFn(beam.DoFn):
    """((shard, n_shards), segment references) -> one shard file in the staging folder, written
    one record batch (about 64 MiB of ids) at a time from the token store; yields its stats."""

    def __init__(self, staging: str, fmt: str, seq_len: int):
        self.staging, self.fmt, self.seq_len = staging, fmt, seq_len

    def process(self, element):
        from pipeline.output import rows_per_batch, write_tables

        (shard, n_shards), refs = element
        sample_tokens: list[int] = []

        def tables():
            for batch in batches_of_samples(refs, rows_per_batch(self.seq_len)):
                segments = []
                for sample, slot, doc_id, start, length, path, score in batch:
                    tokens = token_store.read(path, start, length)
                    if score is None:
                        score = dependency_score(tokens)
                    segments.append((sample, slot, doc_id, start, tokens, score))
                table = build_sample_table(segments)
                sample_tokens.extend(np.asarray(table.column("n_tokens")).tolist())
                yield table

        name = shard_name(shard, n_shards, self.fmt)
        sha = write_tables(
            tables(), SAMPLE_SCHEMA, FileSystems.join(self.staging, "shards", name), self.fmt
        )
        yield {
            "path": f"shards/{name}",
            "rows": len(sample_tokens),
            "tokens": int(sum(sample_tokens)),
            "sha256": sha,
            "sample_tokens": sample_tokens,
        }


def _write_json(obj, path: str) -> str:
    with FileSystems.create(path) as fh:
        fh.write(json.dumps(obj, indent=1, sort_keys=True).encode("utf-8"))
    return path


def _write_documents(rows, path: str) -> str:
    from pipeline.output import write_tables

    write_tables([build_document_table(rows)], DOCUMENT_SCHEMA, path, "arrow")
    return path


def _write_rejects(rejects, path: str) -> str:
    lines = sorted(json.dumps(r.to_json_dict(), ensure_ascii=False) for r in rejects)
    with FileSystems.create(path) as fh:
        fh.write("".join(line + "\n" for line in lines).encode("utf-8"))
    return path


class BuildDataset(beam.PTransform):
    """Sources -> shards, documents.arrow, rejects.jsonl and shard stats in ``staging``."""

    def __init__(
        self,
        *,
        sources,
        discovery_rejects,
        tokenizer_spec,
        limits,
        seq_len,
        overlap,
        samples_per_shard,
        fmt,
        staging,
        slack=0,
        mix=None,
        seed=0,
        min_score=None,
        dedup=True,
        fill_gaps=False,
        progress=False,
        trust_remote_code=False,
        cache_dir=None,
    ):
        super().__init__()
        self.progress, self.trust_remote_code = progress, trust_remote_code
        self.cache_dir = cache_dir
        self.slack, self.mix, self.seed, self.min_score = slack, mix, seed, min_score
        self.dedup = dedup
        self.fill_gaps = fill_gaps
        self.sources, self.discovery_rejects = sources, discovery_rejects
        self.tokenizer_spec, self.limits = tokenizer_spec, limits
        self.seq_len, self.overlap, self.samples_per_shard = seq_len, overlap, samples_per_shard
        self.fmt, self.staging = fmt, staging

    def expand(self, pbegin):
        staging = self.staging
        read = (
            pbegin
            | "CreateSources" >> beam.Create(self.sources)
            | "SpreadSources" >> beam.Reshuffle()
            | "ReadSources" >> beam.ParDo(ReadSourceFn(self.limits))
            | "SplitRead" >> SplitTagged(MAIN, REJECTS)
        )
        texts, reject_sets = read[MAIN], [read[REJECTS]]
        if self.dedup:
            drops = (
                texts
                | "Signatures"
                >> beam.FlatMap(lambda d: [(k, s) for s in signatures(d) for k in band_keys(s)])
                | "GroupByBand" >> beam.GroupByKey()
                | "FindDuplicates" >> beam.FlatMap(_bucket_duplicates)
                | "DuplicatesByDocument" >> beam.GroupByKey()
            )
            deduped = (
                texts
                | "RemoveDuplicates" >> beam.ParDo(RemoveDuplicatesFn(), beam.pvalue.AsDict(drops))
                | "SplitDedup" >> SplitTagged(MAIN, REJECTS)
            )
            texts = deduped[MAIN]
            reject_sets.append(deduped[REJECTS])
        docs = texts | "Tokenize" >> beam.ParDo(
            TokenizeFn(
                self.tokenizer_spec,
                self.seq_len,
                self.overlap,
                self.slack,
                staging=staging,
                progress=self.progress,
                trust_remote_code=self.trust_remote_code,
                cache_dir=self.cache_dir,
            )
        )
        planned = (
            docs
            | "DocInfo" >> beam.Map(doc_info)
            | "CollectInfos" >> beam.combiners.ToList()
            | "PlanSamples"
            >> beam.FlatMap(
                plan_to_assignments,
                seq_len=self.seq_len,
                overlap=self.overlap,
                samples_per_shard=self.samples_per_shard,
                mix=self.mix,
                seed=self.seed,
                min_score=self.min_score,
                fill_gaps=self.fill_gaps,
            )
            | "SplitPlan" >> SplitTagged(MAIN, REJECTS, SUMMARY)
        )
        plan = planned[MAIN]
        reject_sets.append(planned[REJECTS])
        wrote_plan = planned[SUMMARY] | "WritePlanSummary" >> beam.Map(
            _write_json, FileSystems.join(staging, "plan.json")
        )
        cut = (
            {"doc": docs | "KeyDocs" >> beam.Map(lambda d: (d.doc_id, d)), "plan": plan}
            | "JoinPlan" >> beam.CoGroupByKey()
            | "CutSegments" >> beam.ParDo(CutSegmentsFn())
            | "SplitCut" >> SplitTagged(MAIN, DOCUMENTS)
        )
        shard_stats = (
            cut[MAIN]
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(WriteShardFn(staging, self.fmt, self.seq_len))
        )
        wrote_stats = (
            shard_stats
            | "CollectShardStats" >> beam.combiners.ToList()
            | "WriteShardStats"
            >> beam.Map(
                lambda s: _write_json(
                    sorted(s, key=lambda x: x["path"]), FileSystems.join(staging, "shards.json")
                )
            )
        )
        wrote_docs = (
            cut[DOCUMENTS]
            | "CollectDocuments" >> beam.combiners.ToList()
            | "WriteDocuments"
            >> beam.Map(_write_documents, FileSystems.join(staging, "documents.arrow"))
        )
        wrote_rejects = (
            (*reject_sets, pbegin | "DiscoveryRejects" >> beam.Create(self.discovery_rejects))
            | "AllRejects" >> beam.Flatten()
            | "CollectRejects" >> beam.combiners.ToList()
            | "WriteRejects" >> beam.Map(_write_rejects, FileSystems.join(staging, "rejects.jsonl"))
        )
        # One last step that depends on every sink. Beam 2.77's DaskRunner computes only the
        # graph of the pipeline's last transform, so without this join it would skip sinks.
        return (
            (wrote_plan, wrote_stats, wrote_docs, wrote_rejects)
            | "AllWritten" >> beam.Flatten()
            | "Done" >> beam.combiners.Count.Globally()
        )
