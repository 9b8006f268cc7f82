"""The pipeline's steps as Beam composites, one module each; ``BuildDataset`` wires them.

Graph (labels as they appear in the runner)::

    CreateSources -> ReadDocuments (read, dedup) --------------------------> rejects ---+
                         | texts                                              ^          |
                     Tokenize (ids -> token store, windows, score)            |          |
                         |                                                    |          |
                         +-> PlanSamples (one whole-corpus plan) --- left out +          |
                         |        | assignments                | summary ----------------+
                         +--------+-> CutSegments (CoGroupByKey)                         |
                                       | segment refs by shard   | documents ------------+
                                   WriteShards -> shard stats -----------------------------+
                                                                                         v
                 WriteRunFiles: rejects.jsonl, documents.arrow, shard stats, plan summary

Token ids do not travel through the graph: Tokenize writes each document's ids to the token
store (``pipeline/token_store.py``, in the staging folder) and passes on only its length,
windows and path; CutSegments and WriteShards move references (``SegmentRef``), and
WriteShards reads the slices back while it streams each shard one record batch at a time. What
the runner buffers between steps is therefore a few hundred bytes per piece, whatever the
corpus size.

What travels is a batch at a time: Tokenize emits the documents of one tokenizer call as one
list (up to 256 short records; a long document alone), PlanSamples plans and CutSegments joins
and cuts a batch as one element (keyed by its first document's id), and CutSegments gives one
list of references per shard and one list of documents.arrow rows per batch. The runner's cost
is per element at every step (~10-60 us), so a corpus of many short records pays it per batch.
"""

from __future__ import annotations

import math

import apache_beam as beam

from pipeline import beam_memo
from pipeline.runners import RunnerTraits
from pipeline.steps import early
from pipeline.steps.common import DOCUMENTS, MAIN, REJECTS, STATS, SUMMARY, Repartition
from pipeline.steps.plan import CutSegments, PlanSamples
from pipeline.steps.read import ClaimGroupFn, ReadDocuments
from pipeline.steps.tokenize import Tokenize
from pipeline.steps.write import WriteRunFiles, WriteShards

__all__ = ["BuildDataset"]

# Every process that builds or runs this graph imports this package (the driver for
# BuildDataset, each worker as it unpickles a step's DoFn): Beam's graph construction memoized
beam_memo.install()


class BuildDataset(beam.PTransform):
    """Sources -> shards, documents.arrow, rejects.jsonl, shard stats and the plan summary in
    ``staging``. ``config`` is the run's BuildConfig, passed whole."""

    def __init__(
        self,
        *,
        config,
        sources,
        discovery_rejects,
        staging,
        cache_dir=None,
        progress=None,
        runner=None,
        queue=None,
        head_start=None,
        plot_path=None,
        source_groups=None,
        group_queue=None,
    ):
        super().__init__()
        self.config, self.sources, self.discovery_rejects = config, sources, discovery_rejects
        self.staging, self.cache_dir, self.progress = staging, cache_dir, progress
        # what the graph allows for in the runner (pipeline/runners.py: RunnerTraits): Beam
        # 2.77's DaskRunner drops finish_bundle's outputs, runs the graph above a side input
        # again, and keeps a collection's partitions
        self.runner = runner or RunnerTraits()
        self.queue = queue  # SourceQueue (ReadDocuments), or None: Reshuffle
        self.head_start = head_start  # the head start's folder (pipeline/head_start.py), or None
        self.plot_path = plot_path  # where the plan step writes the plots' data, or None
        # the sources in groups of about equal size, one partition each (DaskRunner), or None
        self.source_groups = source_groups
        # or those groups in a SourceQueue (a cluster of this machine): each partition takes
        # the next group as it starts, the largest first
        self.group_queue = group_queue

    def expand(self, pbegin):
        config, staging, runner = self.config, self.staging, self.runner
        side_inputs, gather = runner.side_inputs_once, bool(runner.partitions)
        tokenize_early = early.enabled(config, staging)
        if self.group_queue:
            sources = (
                pbegin
                | "CreateTickets"
                >> beam.Create(list(range(self.group_queue.tickets)), reshuffle=False)
                | "ClaimGroups" >> beam.ParDo(ClaimGroupFn(self.group_queue))
            )
        elif self.source_groups:
            sources = (
                pbegin
                | "CreateSources" >> beam.Create(self.source_groups, reshuffle=False)
                | "Ungroup" >> beam.FlatMap(lambda group: group)
            )
        else:
            # no reshuffle of its own: ReadDocuments spreads the sources (a Reshuffle, or the
            # queue's tickets, which take them as a side input); one stage fewer
            sources = pbegin | "CreateSources" >> beam.Create(self.sources, reshuffle=False)
        read = sources | "ReadDocuments" >> ReadDocuments(
            config.read_settings,
            dedup=config.dedup,
            within_repository=config.dedup_within_repository,
            early=(config, staging, self.cache_dir) if tokenize_early else None,
            queue=self.queue,
            head_start=self.head_start,
            side_inputs=side_inputs,
            spread=not self.source_groups,
            # the square root: the band shuffle's tasks go as the square of its partitions
            signature_partitions=math.isqrt(runner.partitions) if gather else None,
        )
        tokenized = read[MAIN] | "Tokenize" >> Tokenize(
            config,
            staging,
            cache_dir=self.cache_dir,
            progress=self.progress,
            early=tokenize_early,
            batch=runner.finish_bundle_outputs,
            head_start=self.head_start,
        )
        # what the tokenize step passes on is small (references, windows): in one partition
        docs = tokenized | "Gather" >> Repartition(1) if gather else tokenized
        planned = docs | "PlanSamples" >> PlanSamples(config.plan_settings, self.plot_path, gather)
        # a batch of documents keyed by its first document's id (pipeline/steps/plan.py)
        keyed_docs = docs | "KeyDocs" >> beam.Map(lambda batch: (batch[0].doc_id, batch))
        cut = {"doc": keyed_docs, "plan": planned[MAIN]} | "CutSegments" >> CutSegments()
        shard_stats = cut[MAIN] | "WriteShards" >> WriteShards(
            staging, config.shard_format, config.seq_len, runner.partitions
        )
        discovery = pbegin | "DiscoveryRejects" >> beam.Create(
            self.discovery_rejects, reshuffle=False
        )
        # The last step, which depends on every other: the whole-corpus files in one collect
        return {
            STATS: shard_stats,
            DOCUMENTS: cut[DOCUMENTS],
            REJECTS: (read[REJECTS], planned[REJECTS], discovery),
            SUMMARY: planned[SUMMARY],
        } | "WriteRunFiles" >> WriteRunFiles(staging, gather)
