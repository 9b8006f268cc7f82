"""Write step: shard files from segment references; documents.arrow, rejects.jsonl and the
driver's bookkeeping (shard stats, plan summary), collected and written by one last step; all
into the run's staging folder."""

from __future__ import annotations

import json
import queue
import threading

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from pipeline import token_store
from pipeline.steps.common import DOCUMENTS, REJECTS, STATS, SUMMARY, Collect, Repartition
from schemas import layout
from schemas.columns import DOCUMENT_SCHEMA, SAMPLE_SCHEMA
from schemas.layout import shard_path
from transforms.code.dependency_score import dependency_score
from transforms.samples.tables import (
    Segment,
    batches_of_samples,
    build_document_table,
    build_sample_table,
)


class ahead:  # noqa: N801 - used as a context manager, like open()
    """``with ahead(items) as it:`` the items of an iterator, each made in a thread while the
    one before is used: the next is begun when the last is taken, so two are in memory at
    most. An exception raised making one is raised where it would have been used; leaving the
    block early stops the thread."""

    _END = object()

    def __init__(self, items):
        self._items = iter(items)
        self._made: queue.Queue = queue.Queue()
        self._may_make = threading.Semaphore(1)  # one item ahead of the one in use
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._make, daemon=True)

    def _make(self) -> None:
        try:
            while True:
                while not self._may_make.acquire(timeout=0.05):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                item = next(self._items, self._END)
                self._made.put((True, item))
                if item is self._END:
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            self._made.put((False, err))

    def __iter__(self):
        while True:
            ok, item = self._made.get()
            self._may_make.release()  # taken: the next may be made while this one is used
            if not ok:
                raise item
            if item is self._END:
                return
            yield item

    def __enter__(self):
        self._thread.start()
        return iter(self)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class WriteShardFn(beam.DoFn):
    """((split, shard, n_shards), lists of segment references, one per batch of documents cut)
    -> one shard file in the staging folder, written one record batch (about 64 MiB of ids) at
    a time from the token store, the next batch made while the last is written; yields its
    stats (path, split, rows, tokens, sha256, sample_tokens)."""

    def __init__(self, staging: str, fmt: str, seq_len: int):
        self.staging, self.fmt, self.seq_len = staging, fmt, seq_len

    def process(self, element):
        from pipeline.output import rows_per_batch, write_tables

        (split, shard, n_shards), lists = element
        # a list, made here: tables() runs in ahead's thread, and a runner may hand the
        # group's values as an iterable read through its state API, whose handler Beam's
        # worker finds in a thread-local of the bundle's thread (sdk_worker.py)
        refs = [ref for refs_of_batch in lists for ref in refs_of_batch]
        sample_tokens: list[int] = []

        def tables():
            for batch in batches_of_samples(refs, rows_per_batch(self.seq_len)):
                segments = []
                for ref in batch:
                    tokens = token_store.read(
                        ref.tokens_path, ref.tokens_offset + ref.start, ref.length
                    )
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
        # the next record batch is read and built while the last is written and hashed
        with ahead(tables()) as made:
            sha = write_tables(made, SAMPLE_SCHEMA, FileSystems.join(self.staging, path), self.fmt)
        yield {
            "path": path,
            "split": split,
            "rows": len(sample_tokens),
            "tokens": int(sum(sample_tokens)),
            "sha256": sha,
            "sample_tokens": sample_tokens,
        }


def _json_bytes(obj) -> bytes:
    """The driver's bookkeeping files (shard stats, plan summary), as JSON."""
    return json.dumps(obj, indent=1, sort_keys=True).encode("utf-8")


class WriteShards(beam.PTransform):
    """Lists of segment references keyed by shard -> shard files in the staging folder;
    returns each shard's stats (one dict a shard, for :class:`WriteRunFiles`)."""

    def __init__(self, staging: str, fmt: str, seq_len: int, spread: int | None = None):
        super().__init__()
        self.staging, self.fmt, self.seq_len = staging, fmt, seq_len
        # DaskRunner: the shards, grouped in the few partitions the references were gathered
        # into, spread over this many partitions before they are written (Repartition)
        self.spread = spread

    def expand(self, keyed_refs):
        shards = keyed_refs | "GroupByShard" >> beam.GroupByKey()
        if self.spread:
            shards = shards | "Spread" >> Repartition(self.spread)
        return shards | "WriteShardFiles" >> beam.ParDo(
            WriteShardFn(self.staging, self.fmt, self.seq_len)
        )


# What WriteRunFiles collects (the steps' output tags), each into its file in the staging folder
RUN_FILES = {
    STATS: layout.SHARD_STATS,
    DOCUMENTS: layout.DOCUMENTS,
    REJECTS: layout.REJECTS,
    SUMMARY: layout.PLAN_SUMMARY,
}


def write_run_files(tagged: list[tuple[str, object]], staging: str) -> list[str]:
    """``(tag, element)`` pairs, all of a run's (a DOCUMENTS element: a list of rows) -> its
    whole-corpus files in ``staging``: the shard stats (sorted by path), documents.arrow
    (sorted by doc_id), rejects.jsonl (sorted lines) and the plan summary (exactly one). A tag
    with no element still gets its file (no documents: an empty table). Returns the paths
    written."""
    parts: dict[str, list] = {tag: [] for tag in RUN_FILES}
    for tag, element in tagged:
        parts[tag].append(element)  # an unknown tag: KeyError, a wiring error
    if len(parts[SUMMARY]) != 1:
        raise RuntimeError(f"the plan step gave {len(parts[SUMMARY])} summaries, not one")
    from pipeline.output import write_bytes, write_tables

    paths = {tag: FileSystems.join(staging, name) for tag, name in RUN_FILES.items()}
    write_bytes(paths[STATS], _json_bytes(sorted(parts[STATS], key=lambda s: s["path"])))
    documents = build_document_table([row for rows in parts[DOCUMENTS] for row in rows])
    write_tables([documents], DOCUMENT_SCHEMA, paths[DOCUMENTS], "arrow")
    lines = sorted(json.dumps(r.to_json_dict(), ensure_ascii=False) for r in parts[REJECTS])
    write_bytes(paths[REJECTS], "".join(line + "\n" for line in lines).encode("utf-8"))
    write_bytes(paths[SUMMARY], _json_bytes(parts[SUMMARY][0]))
    return list(paths.values())


class WriteRunFiles(beam.PTransform):
    """``{tag: PCollection or tuple of them}`` (every tag of :data:`RUN_FILES`) -> the run's
    whole-corpus files, written by one last step (:func:`write_run_files`); returns their
    paths, as one list.

    One collect for the four files, not one each: on DirectRunner every collect is two
    stages, each a round trip to every worker (~0.05-0.1 s at 16 workers), and this step,
    which depends on every other, is also what Beam 2.77's DaskRunner needs at the end (it
    computes only the graph of the pipeline's last transform)."""

    def __init__(self, staging: str, gather: bool = False):
        super().__init__()
        self.staging = staging
        self.gather = gather  # DaskRunner: collect in one partition (Collect)

    def expand(self, parts: dict):
        if sorted(parts) != sorted(RUN_FILES):
            raise ValueError(f"WriteRunFiles takes {sorted(RUN_FILES)}, not {sorted(parts)}")
        tagged = [
            pcoll | f"Tag{tag.capitalize()}{i or ''}" >> beam.Map(lambda e, t=tag: (t, e))
            for tag in RUN_FILES
            for i, pcoll in enumerate(parts[tag] if isinstance(parts[tag], tuple) else [parts[tag]])
        ]
        return (
            tagged
            | "AllParts" >> beam.Flatten()
            | "CollectParts" >> Collect(self.gather)
            | "WriteFiles" >> beam.Map(write_run_files, self.staging)
        )
