"""Read step: sources -> text documents, with exact and near-duplicate files removed.

Every input not used comes out on the ``rejects`` output with its reason (``ReadSourceFn``
never lets one bad input end a long run).
"""

from __future__ import annotations

import contextlib
import logging

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline import head_start
from pipeline.discover import Source, read_source
from pipeline.source_queue import SourceQueue
from pipeline.steps import early
from pipeline.steps.common import (
    MAIN,
    NAMESPACE,
    REJECTS,
    BroadcastJoin,
    Repartition,
    SplitTagged,
    freeze_heap_once,
)
from transforms.code.dedup import band_keys, duplicates_in_bucket, remove_items, signatures
from transforms.documents import Reject, RejectError
from transforms.inputs.reading import ReadSettings, display_path

_LOG = logging.getLogger(__name__)


class ReadSourceFn(beam.DoFn):
    """A source -> TextDocument(s); every file not used goes to the ``rejects`` output.

    With ``early`` (``(config, staging, cache_dir)``), each document read is handed to the
    background tokenizer of ``pipeline/steps/early.py`` before it goes on. With ``head_start``
    (the folder of ``pipeline/head_start.py``), the first source read stops its helpers, and a
    source one of them holds is waited for (what it read and tokenized is then taken, not made
    again)."""

    def __init__(self, settings: ReadSettings, early=None, head_start: str | None = None):
        self.settings, self.early, self.head_start = settings, early, head_start

    def setup(self):
        freeze_heap_once()  # the worker's imports out of the collector's sweeps

    def process(self, src: Source):
        items = None
        if self.head_start:
            head_start.stop(self.head_start)  # the run's workers have begun: no more taken
            head_start.wait_for(self.head_start, src.doc_id)
            items = head_start.read_items(self.head_start, src)
        try:
            for item in read_source(src, self.settings) if items is None else items:
                if isinstance(item, Reject):
                    Metrics.counter(NAMESPACE, f"rejects_{item.reason}").inc()
                    yield REJECTS, item
                else:
                    if self.early:
                        early.submit(*self.early, self.head_start, item)
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

    def finish_bundle(self):
        if self.early:  # the entries are on disk before the next stage looks for them
            early.drain(self.early[1])


def _bucket_duplicates(element, within_repository: str):
    _, members = element
    for dropped, kept, sim in duplicates_in_bucket(list(members), within_repository):
        yield dropped.doc_id, (dropped.path, kept.where(), sim)


class RemoveDuplicatesFn(beam.DoFn):
    """Leave out the files (or whole documents) that duplicate a copy kept elsewhere.

    Takes a document and the drops by document id as a side input (``drops``), or, with no
    side input, ``(doc_id, {"doc": [document], "drop": [(path, kept, sim)...]})`` from a
    join."""

    def process(self, element, drops: dict | None = None):
        if drops is None:
            doc_id, grouped = element
            docs, found = list(grouped["doc"]), list(grouped["drop"])
            if len(docs) != 1:
                raise RuntimeError(f"document {doc_id}: {len(docs)} documents under one id")
            doc = docs[0]
        else:
            doc, found = element, list(drops.get(element.doc_id) or ())
        if not found:
            yield MAIN, doc
            return
        kept, rejects = remove_items(doc, found)
        for r in rejects:
            Metrics.counter(NAMESPACE, f"rejects_{r.reason}").inc()
            yield REJECTS, r
        if kept is not None:
            yield MAIN, kept


class ClaimSourcesFn(beam.DoFn):
    """A worker's ticket -> the sources it takes from the run's ``SourceQueue``, one at a time
    (``pipeline/source_queue.py``): the next is taken when the read and tokenize steps fused
    after this one are done with the last."""

    def __init__(self, queue: SourceQueue):
        self.queue = queue

    def process(self, ticket, sources: list[Source]):
        by_id = {s.doc_id: s for s in sources}
        for doc_id in self.queue.claims(ticket[0]):
            yield by_id[doc_id]


class ClaimGroupFn(beam.DoFn):
    """A partition's ticket -> the sources of the group it takes from the run's queue of
    groups (``SourceQueue.of_groups``; DaskRunner on a cluster of this machine): the k-th
    partition to start takes the k-th group, the largest first, in whatever order the
    scheduler runs the partitions (not by their index), so the last groups to run are the
    smallest. Run again, a ticket takes the same group."""

    def __init__(self, queue: SourceQueue):
        self.queue = queue

    def process(self, ticket: int):
        with contextlib.closing(self.queue.claims(ticket)) as claims:
            taken = next(claims, None)
        if taken is not None:
            yield from self.queue.group(taken)


class ReadDocuments(beam.PTransform):
    """``Source`` s -> ``{MAIN: TextDocument s, REJECTS: Reject s}`` (dedup unless off)."""

    def __init__(
        self,
        settings: ReadSettings,
        dedup: bool = True,
        within_repository="off",
        early=None,
        queue: SourceQueue | None = None,
        head_start: str | None = None,
        side_inputs: bool = True,
        spread: bool = True,
        signature_partitions: int | None = None,
    ):
        super().__init__()
        self.settings, self.dedup = settings, dedup
        self.within_repository = within_repository  # off | exact | near
        self.early = early  # (config, staging, cache_dir): tokenize while reading goes on
        self.head_start = head_start  # pipeline/head_start.py's folder: tokenized before Beam
        # on a runner that splits a step's input over a fixed set of workers (DirectRunner
        # multi_processing), one ticket a worker, each taking sources from the queue as it is
        # free; elsewhere a Reshuffle (those runners rebalance their work themselves)
        self.queue = queue
        # False: the duplicates reach their documents through a join instead of a side input,
        # for a runner that computes a side input by running the graph above it again (Beam
        # 2.77's DaskRunner: every source read twice). A side input elsewhere: DirectRunner's
        # shuffle would hold every text decoded in its driver.
        self.with_side_inputs = side_inputs
        # False: the sources come spread over the workers already (DaskRunner: one partition
        # per group of sources, pipeline/job.py), where a Reshuffle would deal them at random
        self.spread = spread
        # DaskRunner: the documents' signatures are gathered into this many partitions before
        # they are grouped by band (Repartition), not shuffled over every partition (a task
        # for each pair); a few, not one: a file's 15 band records are ~1 KB, and a million
        # files' would be one task's. Set, the join of the texts with their drops is a
        # BroadcastJoin (the drops to every partition of the texts), not a shuffle of the texts
        self.signature_partitions = signature_partitions

    def expand(self, sources):
        if self.queue:
            spread = (
                sources.pipeline
                # spread by the GroupByKey below: no reshuffle of the Create's own
                | "Tickets"
                >> beam.Create([(t, t) for t in range(self.queue.tickets)], reshuffle=False)
                | "SpreadTickets" >> beam.GroupByKey()
                | "ClaimSources"
                >> beam.ParDo(ClaimSourcesFn(self.queue), beam.pvalue.AsList(sources))
            )
        elif self.spread:
            spread = sources | "SpreadSources" >> beam.Reshuffle()
        else:
            spread = sources
        read = (
            spread
            | "ReadSources" >> beam.ParDo(ReadSourceFn(self.settings, self.early, self.head_start))
            | "SplitRead" >> SplitTagged(MAIN, REJECTS)
        )
        if not self.dedup:
            return {MAIN: read[MAIN], REJECTS: read[REJECTS]}
        texts = read[MAIN]
        banded = texts | "Signatures" >> beam.FlatMap(
            lambda d: [(k, s) for s in signatures(d) for k in band_keys(s)]
        )
        if self.signature_partitions:
            banded = banded | "GatherSignatures" >> Repartition(self.signature_partitions)
        drops = (
            banded
            | "GroupByBand" >> beam.GroupByKey()
            | "FindDuplicates" >> beam.FlatMap(_bucket_duplicates, self.within_repository)
        )
        if not self.with_side_inputs:
            # DaskRunner's graph (signature_partitions set): the drops go whole to every
            # partition of the texts, which stay where they were read; else a shuffle
            join = BroadcastJoin("doc", "drop") if self.signature_partitions else None
            kept = {
                "doc": texts | "KeyByDocument" >> beam.Map(lambda d: (d.doc_id, d)),
                "drop": drops,
            } | "JoinDrops" >> (join or beam.CoGroupByKey())
            kept = kept | "RemoveDuplicates" >> beam.ParDo(RemoveDuplicatesFn())
        else:
            by_doc = drops | "DuplicatesByDocument" >> beam.GroupByKey()
            kept = texts | "RemoveDuplicates" >> beam.ParDo(
                RemoveDuplicatesFn(), beam.pvalue.AsDict(by_doc)
            )
        deduped = kept | "SplitDedup" >> SplitTagged(MAIN, REJECTS)
        rejects = (read[REJECTS], deduped[REJECTS]) | "ReadRejects" >> beam.Flatten()
        return {MAIN: deduped[MAIN], REJECTS: rejects}
