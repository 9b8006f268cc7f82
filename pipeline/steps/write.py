"""Write step: shard files from segment references, documents.arrow, rejects.jsonl, and the
driver's bookkeeping (shard stats, plan summary), all into the run's staging folder."""

from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from pipeline import token_store
from pipeline.steps.common import write_json
from schemas.columns import DOCUMENT_SCHEMA, SAMPLE_SCHEMA
from schemas.layout import DOCUMENTS, REJECTS, SHARD_STATS, shard_path
from transforms.code.dependency_score import dependency_score
from transforms.samples.tables import (
    Segment,
    batches_of_samples,
    build_document_table,
    build_sample_table,
)


class WriteShardFn(beam.DoFn):
    """((split, shard, n_shards), segment references) -> one shard file in the staging folder,
    written one record batch (about 64 MiB of ids) at a time from the token store; yields its
    stats (path, split, rows, tokens, sha256, sample_tokens)."""

    def __init__(self, staging: str, fmt: str, seq_len: int):
        self.staging, self.fmt, self.seq_len = staging, fmt, seq_len

    def process(self, element):
        from pipeline.output import rows_per_batch, write_tables

        (split, shard, n_shards), refs = element
        sample_tokens: list[int] = []

        def tables():
            for batch in batches_of_samples(refs, rows_per_batch(self.seq_len)):
                segments = []
                for ref in batch:
                    tokens = token_store.read(ref.tokens_path, ref.start, ref.length)
                    score = dependency_score(tokens) if ref.score is None else ref.score
                    segments.append(
                        Segment(
                            ref.sample, ref.slot, ref.doc_id, ref.start, tokens, score, ref.context
                        )
                    )
                table = build_sample_table(segments)
                sample_tokens.extend(np.asarray(table.column("n_tokens")).tolist())
                yield table

        path = shard_path(split, shard, n_shards, self.fmt)
        sha = write_tables(tables(), SAMPLE_SCHEMA, FileSystems.join(self.staging, path), self.fmt)
        yield {
            "path": path,
            "split": split,
            "rows": len(sample_tokens),
            "tokens": int(sum(sample_tokens)),
            "sha256": sha,
            "sample_tokens": sample_tokens,
        }


def _write_documents(rows, path: str) -> str:
    from pipeline.output import write_tables

    write_tables([build_document_table(rows)], DOCUMENT_SCHEMA, path, "arrow")
    return path


def _write_rejects(rejects, path: str) -> str:
    lines = sorted(json.dumps(r.to_json_dict(), ensure_ascii=False) for r in rejects)
    with FileSystems.create(path) as fh:
        fh.write("".join(line + "\n" for line in lines).encode("utf-8"))
    return path


def _sorted_stats(stats: list[dict]) -> list[dict]:
    return sorted(stats, key=lambda s: s["path"])


class WriteShards(beam.PTransform):
    """Keyed segment references -> shard files; returns the path of the shard stats file."""

    def __init__(self, staging: str, fmt: str, seq_len: int):
        super().__init__()
        self.staging, self.fmt, self.seq_len = staging, fmt, seq_len

    def expand(self, keyed_refs):
        return (
            keyed_refs
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShardFiles" >> beam.ParDo(WriteShardFn(self.staging, self.fmt, self.seq_len))
            | "CollectShardStats" >> beam.combiners.ToList()
            | "SortShardStats" >> beam.Map(_sorted_stats)
            | "WriteShardStats" >> beam.Map(write_json, FileSystems.join(self.staging, SHARD_STATS))
        )


class WriteDocuments(beam.PTransform):
    """documents.arrow rows -> the documents table (sorted by doc_id); returns its path."""

    def __init__(self, staging: str):
        super().__init__()
        self.staging = staging

    def expand(self, rows):
        return (
            rows
            | "CollectDocuments" >> beam.combiners.ToList()
            | "WriteDocumentsTable"
            >> beam.Map(_write_documents, FileSystems.join(self.staging, DOCUMENTS))
        )


class WriteRejects(beam.PTransform):
    """Reject s -> rejects.jsonl (sorted lines); returns its path."""

    def __init__(self, staging: str):
        super().__init__()
        self.staging = staging

    def expand(self, rejects):
        return (
            rejects
            | "CollectRejects" >> beam.combiners.ToList()
            | "WriteRejectsFile"
            >> beam.Map(_write_rejects, FileSystems.join(self.staging, REJECTS))
        )
