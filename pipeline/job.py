"""One pipeline run after its flags are checked: :func:`prepare` -> :func:`execute` ->
:func:`finalize` (``pipeline/run.py`` is the command line; it imports this module, and with it
Apache Beam, only once the flags have passed the checks that need no Beam).

:func:`prepare` checks tokenizer, inputs and disk space before anything is written;
:func:`execute` runs the Beam graph into the run's staging folder; :func:`finalize` builds the
manifest, refuses a worse dataset and publishes.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import __version__, cache, remote
from pipeline.config import FIELD_NAMES, BuildConfig, console_log_level
from pipeline.discover import HF, discover_inputs
from pipeline.errors import NoSpace, UsageError
from pipeline.guard import (
    check_free_space,
    check_inputs,
    check_result,
    input_bytes,
    is_no_space,
)
from pipeline.head_start import HeadStart
from pipeline.options import LongctxOptions, check_arguments
from pipeline.output import (
    discard_staging,
    mark_output,
    prepare_staging,
    publish,
    read_json,
    read_table,
    read_text,
    unmark_output,
)
from pipeline.plots import PlotRenderer
from pipeline.report import validation_shortfall, write_report
from pipeline.runners import (
    DaskAsk,
    ask_dask,
    check_runner,
    make_runner,
    runner_traits,
    share_cores,
    static_workers,
    translation_settings,
)
from pipeline.source_queue import SourceQueue
from pipeline.steps import BuildDataset, early
from pipeline.steps.tokenize import Progress
from pipeline.tokenizer_probe import TokenizerProbe
from pipeline.worker_pool import WorkerPool
from schemas.layout import (
    DOCUMENTS,
    MANIFEST,
    PLAN_SUMMARY,
    PLOT_DATA,
    REJECTS,
    REPORT_DIR,
    REPORT_SUMMARY,
    SHARD_STATS,
)
from schemas.manifest import Manifest, build_manifest, parse_manifest
from transforms.balance import guided_groups, lpt_bins
from transforms.samples.tokenize import TokenizerError

_LOG = logging.getLogger("longctx")


def check_mix_against_sources(weights, sources) -> None:
    """--mix naming a kind no input can provide is an argument error, found before any work."""
    if not weights or any(s.kind in ("records", "hf") for s in sources):
        return  # records files may hold either kind; checked when the plan is made
    kinds = {"book" if s.kind == "book" else "code" for s in sources}
    missing = sorted(k for k, w in weights.items() if w > 0 and k not in kinds)
    if missing:
        raise UsageError(f"--mix asks for {', '.join(missing)} but no input of that kind is given")


@dataclass
class Job:
    """Everything :func:`prepare` decided, for :func:`execute` and :func:`finalize`."""

    options: PipelineOptions
    config: BuildConfig
    tokenizer: dict  # LoadedTokenizer.describe(), for the manifest
    sources: list
    discovery_rejects: list
    plotter: PlotRenderer
    workers: WorkerPool | None  # multi_processing: the worker processes started at the outset
    input_bytes: int  # bytes of the local inputs: the disk-space check and the progress ETA
    source_bytes: list[int]  # the same per source (0: remote): the order workers take them in
    head_start: HeadStart | None = None  # multi_processing: tokenizing before the workers begin
    # DaskRunner: the cluster asked for its shape and its workers loading the tokenizer, in
    # the background (pipeline/runners.py:DaskAsk)
    dask: DaskAsk | None = None

    def say(self, *args) -> None:
        if not self.config.quiet:
            print(*args)


def prepare(
    argv: list[str],
    workers: WorkerPool | None = None,
    tokenizer: TokenizerProbe | None = None,
    head_start: HeadStart | None = None,
) -> Job:
    """Parse and check everything that can be checked before anything is written; raises
    :class:`RunRefused` (bad flag: 2, unusable input: 3, no disk space: 6). ``argv`` is already
    expanded from ``--config`` and its values checked (``pipeline.run``, which also starts the
    worker pool and the tokenizer's check; made here where not given)."""
    options = PipelineOptions(argv)
    lc = options.view_as(LongctxOptions)
    logging.getLogger().setLevel(console_log_level(lc.quiet, lc.log_level))
    check_runner(options)
    check_arguments(argv)  # after check_runner: it imports the runner and its option classes
    config = BuildConfig.from_options(lc)
    # DaskRunner: the cluster is asked how many threads it has (and whether its workers see
    # this machine's temporary folder), then its workers load the tokenizer, while this
    # prepares and the graph is made (a background thread: execute waits only for the answer;
    # a head start's task on a worker at the same time waits for the load, not parsing twice)
    dask = ask_dask(options, config.tokenizer, config.trust_remote_code)
    # the report's plots: helper processes import matplotlib while the pipeline runs
    plotter = PlotRenderer()
    # The tokenizer loads (a hub download, or parsing tokenizer.json) in a helper process
    # while the inputs are probed and listed (remote listings wait on the network)
    probe = tokenizer or TokenizerProbe(config.tokenizer, config.trust_remote_code)
    try:
        try:
            check_inputs(config, config.read_settings)
            sources, discovery_rejects = discover_inputs(config)
        except Exception:  # a bad --tokenizer is reported before an input error
            _described(probe)
            raise
        # (not after a Ctrl-C, which does not wait for the tokenizer)
        described = _described(probe)
        check_mix_against_sources(config.mix_weights, sources)
        source_bytes = [input_bytes([s.path]) for s in sources]
        n_input = sum(source_bytes)
        if not config.skip_space_check:
            check_free_space(
                config.output,
                n_input,
                seq_len=config.seq_len,
                overlap=config.overlap,
                incremental=config.incremental,
            )
    except BaseException:
        plotter.close()
        raise
    return Job(
        options,
        config,
        described,
        sources,
        discovery_rejects,
        plotter,
        workers,
        n_input,
        source_bytes,
        head_start,
        dask,
    )


def _described(probe: TokenizerProbe) -> dict:
    try:
        return probe.description()
    except TokenizerError as err:
        raise UsageError(str(err)) from None


def execute(job: Job, staging: str, tokens_cache: str | None) -> None:
    """Run the Beam pipeline; its results land in ``staging``."""
    config = job.config
    tty = sys.stderr.isatty() or bool(os.environ.get("LONGCTX_PROGRESS"))
    progress = None if config.quiet else Progress(job.input_bytes, tty)
    share_cores(job.options)  # multi_processing: one tokenizer thread pool per worker, sized
    workers = static_workers(job.options)
    # the sources taken by the runner's fixed workers as each is free, largest first (a remote
    # file or a Hub dataset counts 0 bytes here: taken last, in their order)
    queue = None
    if workers and len(job.sources) > 1:
        ids = [s.doc_id for s in job.sources]
        queue = SourceQueue.create(ids, job.source_bytes, workers)
    groups, group_queue, options = None, None, job.options
    # the plots' data, written by the plan step for the driver's plot renderer, which watches a
    # local staging folder only
    plot_path = None if remote.is_remote(staging) else FileSystems.join(staging, PLOT_DATA)
    try:
        # DaskRunner: the sources in groups, one partition a group: on a cluster of this machine
        # groups that shrink as they go, taken largest first by the partitions as each starts (a
        # queue); elsewhere groups of about equal size (LPT) in a fixed partition each
        # (one source needs no groups: the cluster's answer is not waited for)
        dask = job.dask.groups() if job.dask and len(job.sources) > 1 else None
        if dask:
            n = min(dask.groups, len(job.sources))
            if dask.here and _work_in_the_read_stage(config, staging) and _dask_queue_wanted():
                groups = source_groups(job.sources, job.source_bytes, n, workers=dask.threads)
                group_queue = SourceQueue.of_groups(groups)
            else:
                groups = source_groups(job.sources, job.source_bytes, n)
            from apache_beam.runners.dask.dask_runner import DaskOptions

            # on a copy: the manifest records the options the user gave, and a run again with them
            # chooses again
            options = copy.deepcopy(job.options)
            options.view_as(DaskOptions).npartitions = len(groups)
        pipeline = beam.Pipeline(runner=make_runner(options, job.workers), options=options)
        _ = pipeline | "BuildDataset" >> BuildDataset(
            config=config,
            sources=job.sources,
            discovery_rejects=job.discovery_rejects,
            staging=staging,
            cache_dir=tokens_cache,
            progress=progress,
            runner=runner_traits(job.options, groups),
            queue=queue,
            source_groups=groups,
            group_queue=group_queue,
            head_start=job.head_start.folder if job.head_start else None,
            plot_path=plot_path,
        )
        if plot_path:  # the plots are drawn once the plan is made
            job.plotter.watch(plot_path, config.seq_len)
        # DaskRunner translates the graph here (and may start its own cluster, whose nannies
        # start a worker again with the settings of the moment: until the run ends)
        with translation_settings(job.options):
            result = pipeline.run()
            result.wait_until_finish()
    finally:
        if job.dask and job.dask.thread:  # long done (a hung connection: a daemon's)
            job.dask.thread.join(timeout=1.0)
        for q in (queue, group_queue):
            if q:
                q.remove()
        if job.workers:  # its server and workers wind down while the run is finalized
            job.workers.release()
    if progress and progress.tty:
        print("\r\033[K", end="", file=sys.stderr, flush=True)  # clear the progress line


def _previous_manifest(out: str) -> Manifest | None:
    path = FileSystems.join(out, MANIFEST)
    return parse_manifest(read_text(path)) if FileSystems.exists(path) else None


def source_groups(
    sources: list, sizes: list[int], n: int, workers: int | None = None
) -> list[list]:
    """``sources`` in ``n`` groups of about equal size (LPT, ``transforms/balance.py``), or,
    given the ``workers`` that take them in turn, up to ``n`` groups largest first, shrinking
    as they go (``guided_groups``). A source whose size is not known here (a remote file, a
    Hub dataset: 0 bytes in ``sizes``) counts as large as the largest known one, so it gets a
    group of its own rather than joining the largest book's."""
    known = [s.kind != HF and not remote.is_remote(s.path) for s in sources]
    largest = max((b for b, k in zip(sizes, known, strict=True) if k), default=0) or 1
    sized = [b if k else largest for b, k in zip(sizes, known, strict=True)]
    if workers:
        return [[sources[i] for i in group] for group in guided_groups(sized, n, workers)]
    bins = lpt_bins(sized, n)
    return [[s for s, b in zip(sources, bins, strict=True) if b == k] for k in range(n)]


DASK_QUEUE = "LONGCTX_DASK_QUEUE"  # "0": fixed groups of equal size on a cluster here too


def _dask_queue_wanted() -> bool:
    return os.environ.get(DASK_QUEUE) != "0"


def _work_in_the_read_stage(config, staging: str) -> bool:
    """Whether the encoder's work happens in the stage that reads the sources, the stage that
    a group's partition runs: without duplicate removal (read and tokenize one stage), or with
    it and the early tokenizer (``pipeline/steps/early.py``). Otherwise the tokenize step is a
    stage of its own, after the duplicates are found, over partitions fixed by then."""
    return not config.dedup or early.enabled(config, staging)


def _beam_options(options: PipelineOptions) -> dict:
    std = options.get_all_options(drop_default=True)
    return {k: v for k, v in sorted(std.items()) if k not in FIELD_NAMES}


def finalize(job: Job, staging: str, tokens_cache: str | None) -> Manifest:
    """Build the manifest, refuse a worse dataset (guard.check_result), write the report and
    publish; returns the manifest. Nothing in ``--output`` changes before the guards pass."""
    config = job.config
    shard_stats = read_json(FileSystems.join(staging, SHARD_STATS))
    plan_summary = read_json(FileSystems.join(staging, PLAN_SUMMARY))
    docs = read_table(FileSystems.join(staging, DOCUMENTS))
    rejects = [
        json.loads(line) for line in read_text(FileSystems.join(staging, REJECTS)).splitlines()
    ]
    manifest = build_manifest(
        version=__version__,
        seq_len=config.seq_len,
        overlap=config.overlap,
        tokenizer=job.tokenizer,
        config=config.effective(_beam_options(job.options)),
        docs=docs,
        shard_stats=shard_stats,
        rejects=rejects,
        plan_summary=plan_summary,
    )
    counts = manifest.counts
    previous = _previous_manifest(config.output)
    check_result(counts, previous and previous.data, config)
    if tokens_cache:
        used, reused = set(plan_summary["cache_keys"]), set(plan_summary["reused_keys"])
        manifest.data["incremental"] = {
            "documents_reused": len(reused),
            "documents_tokenized": len(used - reused),
        }
    sample_tokens = np.array([t for s in shard_stats for t in s["sample_tokens"]], dtype=np.int64)
    write_report(
        FileSystems.join(staging, REPORT_DIR),
        manifest=manifest.data,
        docs=docs,
        sample_tokens=sample_tokens,
        rejects=rejects,
        plotter=job.plotter,
    )
    FileSystems.delete(
        [FileSystems.join(staging, SHARD_STATS), FileSystems.join(staging, PLAN_SUMMARY)]
    )
    plot_data = FileSystems.join(staging, PLOT_DATA)  # written ahead where it could be
    if FileSystems.exists(plot_data):
        FileSystems.delete([plot_data])
    publish(config.output, staging, manifest)
    if tokens_cache:
        cache.prune(tokens_cache, set(plan_summary["cache_keys"]))
    return manifest


def build_and_publish(job: Job) -> Manifest:
    """Under the output's lock: stage, execute, finalize; a failure or refusal removes the
    staging folder and leaves the previous output as it was."""
    out = job.config.output
    marked = mark_output(out)
    staging = prepare_staging(out)
    try:
        tokens_cache = cache.cache_dir(out) if job.config.incremental else None
        execute(job, staging, tokens_cache)
        return finalize(job, staging, tokens_cache)
    except BaseException as err:
        discard_staging(staging)
        if marked:
            unmark_output(out)
        if is_no_space(err):
            raise NoSpace(
                f"--output {out}: the disk filled up while writing (no space left on device); "
                "the partial output was removed and the previous output kept"
            ) from None
        raise


def _rejects_phrase(counts: dict) -> str:
    """``"37 rejected inputs"``, with the folders skipped on purpose (caches, version control,
    virtualenvs, outputs) told apart: ``"3 rejected inputs and 34 skipped folders"``."""
    skipped = (counts.get("rejects_by_reason") or {}).get("skipped_dir", 0)
    rejected = counts["rejects"] - skipped
    text = f"{rejected} rejected input{'s' if rejected != 1 else ''}"
    if skipped:
        text += f" and {skipped} skipped folder{'s' if skipped != 1 else ''}"
    return text


def summary(job: Job, manifest: Manifest, seconds: float) -> None:
    c, config = manifest.counts, job.config
    print(  # the one line --quiet keeps
        f"Wrote {config.output}/ in {seconds:.1f}s: {c['documents']} documents "
        f"({c['document_tokens']:,} tokens), {c['samples']} samples of <= {config.seq_len} "
        f"tokens in {c['shards']} shard(s), fill rate {manifest.data['fill_rate']:.4f}, "
        f"{_rejects_phrase(c)} ({REJECTS})."
    )
    shortfall = validation_shortfall(manifest.data)
    if shortfall:
        print(f"warning: {shortfall}", file=sys.stderr)
    job.say(
        f"Manifest: {os.path.join(config.output, MANIFEST)}  "
        f"Report: {os.path.join(config.output, REPORT_SUMMARY)}"
    )
