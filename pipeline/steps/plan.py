"""Plan step: the whole-corpus sample plan, and the cut of each document into segments.

``PlanSamples`` gathers one small ``DocInfo`` per document (no tokens) into a single list and
plans every sample at once (``transforms/samples/plan.py``), and writes what the report's plots
are drawn from to the staging folder at once (drawn while the rest runs); ``CutSegments``
joins each batch of documents with its assignments and emits segment references keyed by
shard, plus the batch's documents.arrow rows.

Both take the tokenize step's batches (lists of TokenizedDocument s: a batch of short records
encoded together, or one document) and keep them together: a batch is keyed by its first
document's id (ids are unique in a run: the planner refuses a repeated one), so the join and
the cut handle one element per batch. Both read the tokenize step's one output, as every
runner computes a collection read twice once; a runner that computed it again for the second
reader, in other batches, would stop the cut with a mismatch ("plans for ..."), never drop or
repeat a document.
"""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.steps.common import (
    DOCUMENTS,
    MAIN,
    NAMESPACE,
    REJECTS,
    SUMMARY,
    Collect,
    SplitTagged,
)
from transforms.documents import SegmentRef, TokenizedDocument
from transforms.samples.plan import DocInfo, PlanSettings, plan_samples
from transforms.samples.tables import document_row

_LOG = logging.getLogger("longctx")


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
        reused=d.reused,
    )


def write_plot_data(path: str, infos: list[DocInfo], plan) -> None:
    """What the report's plots are drawn from (``pipeline.plots.plot_data``: each kept
    document's id, kind, tokens and score, each sample's tokens), written whole (a temporary
    name of its own, then renamed) to ``path`` in the staging folder, where the driver's plot
    renderer looks for it while the shards are written. Only a head start for the report: a
    failure is logged, and the plots are drawn at the run's end as before."""
    import uuid

    from apache_beam.io.filesystems import FileSystems

    from pipeline.output import write_bytes
    from pipeline.plots import plot_data

    kept = [d for d in infos if d.doc_id in plan.by_doc]
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        columns = ([d.doc_id for d in kept], [d.kind for d in kept], [d.n_tokens for d in kept])
        write_bytes(tmp, plot_data(*columns, [d.score for d in kept], plan.sample_tokens))
        FileSystems.rename([tmp], [path])
    except Exception as err:  # noqa: BLE001 - the report is drawn without it
        _LOG.debug("the plots' data was not written ahead (%s: %s)", type(err).__name__, err)


def doc_infos(batch: list[TokenizedDocument]) -> list[DocInfo]:
    """A batch's planner records, in its order (the first one's id keys the batch)."""
    return [doc_info(d) for d in batch]


def plan_to_assignments(
    batches: list[list[DocInfo]], settings: PlanSettings, plot_path: str | None = None
):
    """Whole-corpus plan of the batches' documents -> ``(MAIN, (key, (shards by split,
    {doc_id: [Assignment...]})))`` per batch with a kept document (``key``: its first
    document's id), ``(REJECTS, Reject)`` per document left out, and one ``(SUMMARY, dict)``;
    the plots' data to ``plot_path`` (:func:`write_plot_data`) first, where given."""
    infos = [info for batch in batches for info in batch]
    plan = plan_samples(infos, settings)
    if plot_path:
        write_plot_data(plot_path, infos, plan)
    Metrics.counter(NAMESPACE, "samples").inc(plan.n_samples)
    by_doc = plan.by_doc
    for batch in batches:
        kept = {i.doc_id: by_doc[i.doc_id] for i in batch if i.doc_id in by_doc}
        if kept:
            yield MAIN, (batch[0].doc_id, (plan.shards, kept))
    for reject in plan.left_out:
        Metrics.counter(NAMESPACE, f"rejects_{reject.reason}").inc()
        yield REJECTS, reject
    yield (
        SUMMARY,
        {
            "packing": plan.packing,
            "mixture": plan.mixture,
            "cache_keys": sorted({d.cache_key for d in infos if d.cache_key}),
            "reused_keys": sorted({d.cache_key for d in infos if d.cache_key and d.reused}),
            "validation_doc_ids": plan.validation_doc_ids,
        },
    )


class PlanSamples(beam.PTransform):
    """Batches of TokenizedDocument s -> ``{MAIN: (batch key, plan), REJECTS: left out,
    SUMMARY: dict}``."""

    def __init__(
        self,
        settings: PlanSettings,
        plot_path: str | None = None,
        gather: bool = False,
    ):
        super().__init__()
        self.settings, self.plot_path = settings, plot_path
        self.gather = gather  # DaskRunner: collect in one partition (Collect)

    def expand(self, docs):
        return (
            docs
            | "DocInfo" >> beam.Map(doc_infos)
            | "CollectInfos" >> Collect(self.gather)
            | "Plan"
            >> beam.FlatMap(plan_to_assignments, settings=self.settings, plot_path=self.plot_path)
            | "SplitPlan" >> SplitTagged(MAIN, REJECTS, SUMMARY)
        )


class CutSegmentsFn(beam.DoFn):
    """(batch key, {doc: [batch], plan: [(shards, {doc_id: assignments})]}) -> lists of
    segment references keyed by ``(split, shard, n_shards)`` (one list per shard the batch
    reaches), plus the list of the batch's documents.arrow rows (its kept documents)."""

    def process(self, element):
        key, grouped = element
        batches, plans = list(grouped["doc"]), list(grouped["plan"])
        if len(batches) != 1 or len(plans) > 1:
            raise RuntimeError(
                f"batch of document {key}: {len(batches)} batches and {len(plans)} plans"
            )
        if not plans:  # all left out by --mix / --min-dependency-score: in rejects.jsonl
            return
        (shards, by_doc), batch = plans[0], batches[0]
        unknown = set(by_doc) - {doc.doc_id for doc in batch}
        if unknown:
            raise RuntimeError(f"batch of document {key}: plans for {sorted(unknown)[:3]}")
        refs: dict[tuple, list[SegmentRef]] = {}
        rows = []
        for doc in batch:
            assignments = by_doc.get(doc.doc_id)
            if assignments is None:  # left out: listed in rejects.jsonl
                continue
            self._cut(doc, shards, assignments, refs)
            rows.append(document_row(doc, len(assignments)))
        for shard, shard_refs in refs.items():
            yield MAIN, (shard, shard_refs)
        if rows:
            yield DOCUMENTS, rows

    @staticmethod
    def _cut(doc: TokenizedDocument, shards: dict, assignments, refs: dict) -> None:
        doc_id = doc.doc_id
        for a in assignments:
            # a segment past the document's end would read the next document's ids, in a
            # batch's file of the token store: a plan that gives one is a bug, stopped here
            if a.start < 0 or a.length < 0 or a.start + a.length > doc.n_tokens:
                raise RuntimeError(
                    f"document {doc_id}: a segment of {a.length} tokens from {a.start} "
                    f"passes its {doc.n_tokens} tokens"
                )
            # a reference only: the shard writer reads the ids (and scores a piece not scored)
            score = doc.segment_score(a.start, a.length)
            ref = SegmentRef(
                a.sample,
                a.slot,
                doc_id,
                a.start,
                a.length,
                doc.tokens_path,
                score,
                a.context,
                doc.tokens_offset,
            )
            refs.setdefault((a.split, a.shard, shards[a.split]), []).append(ref)


class CutSegments(beam.PTransform):
    """``{"doc": (batch key, [TokenizedDocument...]), "plan": (batch key, plan)}`` -> ``{MAIN:
    lists of segment references keyed by shard, DOCUMENTS: lists of rows}``."""

    def expand(self, joined):
        return (
            joined
            | "JoinPlan" >> beam.CoGroupByKey()
            | "CutSegments" >> beam.ParDo(CutSegmentsFn())
            | "SplitCut" >> SplitTagged(MAIN, DOCUMENTS)
        )
