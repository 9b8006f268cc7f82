"""Beam DoFns and composite PTransforms: thin wiring around ``transforms/``.

Graph (labels as they appear in the runner)::

    CreateSources -> ReadSources ---------------------------> rejects -> WriteRejects
                         | docs
                     Tokenize -> DocLengths -> CollectLengths -> PlanSamples
                         |                                          |
                         +--------------- JoinPlan (CoGroupByKey) --+
                                              | segments (keyed by shard)    | documents
                                         GroupByShard -> WriteShards       WriteDocuments
"""

from __future__ import annotations

import hashlib
import json
import logging

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline.discover import BOOK, RECORDS, REPO, Source
from transforms.documents import Reject, RejectError, TextDocument, TokenizedDocument
from transforms.plan import plan_samples
from transforms.reading import ReadLimits, display_path, read_book, read_repository
from transforms.records import read_records
from transforms.samples import build_document_table, build_sample_table

REJECTS = "rejects"
DOCUMENTS = "documents"
NAMESPACE = "longctx"
_LOG = logging.getLogger(__name__)


class ReadSourceFn(beam.DoFn):
    """A source -> TextDocument(s); every file not used goes to the ``rejects`` output."""

    def __init__(self, limits: ReadLimits):
        self.limits = limits

    def process(self, src: Source):
        try:
            if src.kind == BOOK:
                items = [read_book(src.path, src.doc_id, self.limits)]
            elif src.kind == REPO:
                doc, rejects = read_repository(src.path, src.doc_id, src.name, self.limits)
                items = [*rejects, *([doc] if doc else [])]
            elif src.kind == RECORDS:
                items = read_records(src.path, src.doc_id, self.limits)
            else:
                raise ValueError(f"unknown source kind {src.kind!r}")
            for item in items:
                if isinstance(item, Reject):
                    Metrics.counter(NAMESPACE, f"rejects_{item.reason}").inc()
                    yield beam.pvalue.TaggedOutput(REJECTS, item)
                else:
                    yield item
        except RejectError as err:
            Metrics.counter(NAMESPACE, f"rejects_{err.reason}").inc()
            yield beam.pvalue.TaggedOutput(
                REJECTS, Reject(display_path(src.path), err.reason, err.detail)
            )
        except Exception as err:  # one bad input must not end a long run
            _LOG.exception("reading %s failed", src.path)
            Metrics.counter(NAMESPACE, "rejects_read_error").inc()
            yield beam.pvalue.TaggedOutput(
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


class TokenizeFn(beam.DoFn):
    """TextDocument -> TokenizedDocument. The tokenizer is loaded once per worker in ``setup``."""

    def __init__(self, tokenizer_spec: str | None):
        self.tokenizer_spec = tokenizer_spec
        self.tok = None

    def setup(self):
        from transforms.tokenize import load_tokenizer

        self.tok = load_tokenizer(self.tokenizer_spec)

    def process(self, doc: TextDocument):
        from transforms.tokenize import encode_document

        tokens = encode_document(doc, self.tok)
        Metrics.counter(NAMESPACE, f"documents_{doc.kind}").inc()
        Metrics.counter(NAMESPACE, f"tokens_{doc.kind}").inc(int(tokens.shape[0]))
        Metrics.distribution(NAMESPACE, f"doc_tokens_{doc.kind}").update(int(tokens.shape[0]))
        yield TokenizedDocument(
            doc_id=doc.doc_id,
            kind=doc.kind,
            origin=doc.origin,
            files=list(doc.files),
            n_bytes=doc.n_bytes,
            content_sha256=content_sha256(doc),
            tokens=tokens,
        )


def plan_to_assignments(doc_lengths, *, seq_len: int, overlap: int, samples_per_shard: int):
    """Whole-corpus plan -> ``(doc_id, (n_shards, [Assignment...]))`` per document."""
    plan = plan_samples(
        doc_lengths, seq_len=seq_len, overlap=overlap, samples_per_shard=samples_per_shard
    )
    Metrics.counter(NAMESPACE, "samples").inc(plan.n_samples)
    for doc_id, assignments in plan.by_doc.items():
        yield doc_id, (plan.n_shards, assignments)


class CutSegmentsFn(beam.DoFn):
    """(doc_id, {doc, plan}) -> segments keyed by shard, plus the document's metadata row."""

    def process(self, element):
        doc_id, grouped = element
        docs, plans = list(grouped["doc"]), list(grouped["plan"])
        if len(docs) != 1 or len(plans) != 1:
            raise RuntimeError(
                f"document {doc_id}: {len(docs)} token arrays and {len(plans)} plans"
            )
        doc, (n_shards, assignments) = docs[0], plans[0]
        for a in assignments:
            tokens = doc.tokens[a.start : a.start + a.length]
            yield (a.shard, n_shards), (a.sample, a.slot, doc_id, a.start, tokens)
        yield beam.pvalue.TaggedOutput(
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
            },
        )


def shard_name(index: int, count: int, fmt: str) -> str:
    return f"train-{index:05d}-of-{count:05d}.{fmt}"


class WriteShardFn(beam.DoFn):
    """((shard, n_shards), segments) -> one shard file in the staging folder; yields its stats."""

    def __init__(self, staging: str, fmt: str, seq_len: int):
        self.staging, self.fmt, self.seq_len = staging, fmt, seq_len

    def process(self, element):
        from pipeline.output import write_table

        (shard, n_shards), segments = element
        table = build_sample_table(segments)
        name = shard_name(shard, n_shards, self.fmt)
        sha = write_table(
            table, FileSystems.join(self.staging, "shards", name), self.fmt, self.seq_len
        )
        yield {
            "path": f"shards/{name}",
            "rows": table.num_rows,
            "tokens": int(np.asarray(table.column("n_tokens")).sum()) if table.num_rows else 0,
            "sha256": sha,
            "sample_tokens": np.asarray(table.column("n_tokens")).tolist()
            if table.num_rows
            else [],
        }


def _write_json(obj, path: str) -> None:
    with FileSystems.create(path) as fh:
        fh.write(json.dumps(obj, indent=1, sort_keys=True).encode("utf-8"))


def _write_documents(rows, path: str) -> None:
    from pipeline.output import write_table

    write_table(build_document_table(rows), path, "arrow", 0)


def _write_rejects(rejects, path: str) -> None:
    lines = sorted(json.dumps(r.to_json_dict(), ensure_ascii=False) for r in rejects)
    with FileSystems.create(path) as fh:
        fh.write("".join(line + "\n" for line in lines).encode("utf-8"))


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
    ):
        super().__init__()
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
            | "ReadSources"
            >> beam.ParDo(ReadSourceFn(self.limits)).with_outputs(REJECTS, main="docs")
        )
        docs = read.docs | "Tokenize" >> beam.ParDo(TokenizeFn(self.tokenizer_spec))
        plan = (
            docs
            | "DocLengths" >> beam.Map(lambda d: (d.doc_id, d.n_tokens))
            | "CollectLengths" >> beam.combiners.ToList()
            | "PlanSamples"
            >> beam.FlatMap(
                plan_to_assignments,
                seq_len=self.seq_len,
                overlap=self.overlap,
                samples_per_shard=self.samples_per_shard,
            )
        )
        cut = (
            {"doc": docs | "KeyDocs" >> beam.Map(lambda d: (d.doc_id, d)), "plan": plan}
            | "JoinPlan" >> beam.CoGroupByKey()
            | "CutSegments" >> beam.ParDo(CutSegmentsFn()).with_outputs(DOCUMENTS, main="segments")
        )
        shard_stats = (
            cut.segments
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(WriteShardFn(staging, self.fmt, self.seq_len))
        )
        _ = (
            shard_stats
            | "CollectShardStats" >> beam.combiners.ToList()
            | "WriteShardStats"
            >> beam.Map(
                lambda s: _write_json(
                    sorted(s, key=lambda x: x["path"]), FileSystems.join(staging, "shards.json")
                )
            )
        )
        _ = (
            cut[DOCUMENTS]
            | "CollectDocuments" >> beam.combiners.ToList()
            | "WriteDocuments"
            >> beam.Map(_write_documents, FileSystems.join(staging, "documents.arrow"))
        )
        _ = (
            (read[REJECTS], pbegin | "DiscoveryRejects" >> beam.Create(self.discovery_rejects))
            | "AllRejects" >> beam.Flatten()
            | "CollectRejects" >> beam.combiners.ToList()
            | "WriteRejects" >> beam.Map(_write_rejects, FileSystems.join(staging, "rejects.jsonl"))
        )
        return shard_stats
