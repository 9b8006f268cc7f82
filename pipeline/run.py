"""Books and code repositories in, packed Arrow shards out.

    python -m pipeline.run --runner DirectRunner                       # embedded demo corpus
    python -m pipeline.run --runner DirectRunner \\
        --books ../shared/data/books --repos ~/src/myrepo \\
        --tokenizer ../shared/data/tokenizers/qwen3 --seq-len 65536 --output out

Exit status (``pipeline/errors.py``): 0 output complete (rejected inputs are listed in
rejects.jsonl), 2 an unusable flag, 3 an input yields nothing usable, 4 an ``--incremental`` run
would shrink the dataset past ``--shrink-threshold``, 5 another run holds the output folder,
6 not enough disk space, 1 any other failure. In every case but 0 the previous output is left
as it was. Every Beam option passes
through (``--runner``, ``--direct_running_mode``, ``--direct_num_workers``, Dataflow/Flink/Spark).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import __version__, cache, remote
from pipeline.config_file import expand_config
from pipeline.demo import demo_repositories
from pipeline.discover import discover
from pipeline.errors import FAILURE, OK, NoSpace, RunRefused, UsageError
from pipeline.guard import check_free_space, check_inputs, check_result, is_no_space
from pipeline.lock import OutputLock
from pipeline.options import (
    LongctxOptions,
    boundary_slack,
    check_arguments,
    mix_weights,
    validate,
)
from pipeline.output import (
    MANIFEST,
    discard_staging,
    prepare_staging,
    publish,
    read_json,
    read_table,
    read_text,
)
from pipeline.plots import PlotRenderer
from pipeline.report import write_report
from pipeline.runners import check_runner, make_runner
from pipeline.steps import BuildDataset
from transforms.reading import ReadLimits
from transforms.tokenize import TokenizerError, load_tokenizer

_LOG = logging.getLogger("longctx")


def _abs(path: str) -> str:
    return path if remote.is_remote(path) else os.path.abspath(path)


def effective_config(lc: LongctxOptions, options: PipelineOptions, demo: bool) -> dict:
    std = options.get_all_options(drop_default=True)
    return {
        "books": [_abs(p) for p in lc.books],
        "repos": [_abs(p) for p in lc.repos],
        "repos_root": [_abs(p) for p in lc.repos_root],
        "documents": [_abs(p) for p in lc.documents],
        "text_field": lc.text_field,
        "demo_corpus": demo,
        "tokenizer": lc.tokenizer,
        "seq_len": lc.seq_len,
        "overlap": lc.overlap,
        "output": lc.output,
        "format": lc.shard_format,
        "max_file_mb": lc.max_file_mb,
        "shard_mb": lc.shard_mb,
        "overwrite": lc.overwrite,
        "boundary_slack": boundary_slack(lc),
        "mix": mix_weights(lc),
        "seed": lc.seed,
        "min_dependency_score": lc.min_dependency_score,
        "dedup": lc.dedup,
        "fill_gaps": lc.fill_gaps,
        "trust_remote_code": lc.trust_remote_code,
        "incremental": lc.incremental,
        "shrink_threshold": lc.shrink_threshold,
        "allow_shrink": lc.allow_shrink,
        "config": os.path.abspath(lc.config) if lc.config else None,
        "beam_options": {k: v for k, v in sorted(std.items()) if k not in LONGCTX_DESTS},
    }


LONGCTX_DESTS = {
    "books",
    "repos",
    "repos_root",
    "documents",
    "tokenizer",
    "seq_len",
    "overlap",
    "output",
    "shard_format",
    "max_file_mb",
    "shard_mb",
    "overwrite",
    "boundary_slack",
    "mix",
    "seed",
    "min_dependency_score",
    "dedup",
    "fill_gaps",
    "config",
    "quiet",
    "log_level",
    "trust_remote_code",
    "incremental",
    "text_field",
    "shrink_threshold",
    "allow_shrink",
    "skip_space_check",
}


def build_manifest(*, lc, config, tok, docs, shard_stats, rejects, plan_summary) -> dict:
    kinds = docs.column("kind").to_pylist()
    n_tokens = np.asarray(docs.column("n_tokens"), dtype=np.int64)
    by_kind_docs = Counter(kinds)
    by_kind_tokens = Counter()
    for k, n in zip(kinds, n_tokens.tolist(), strict=True):
        by_kind_tokens[k] += n
    samples = sum(s["rows"] for s in shard_stats)
    tokens = sum(s["tokens"] for s in shard_stats)
    return {
        "format_version": 1,
        "pipeline": {"name": "longctx", "version": __version__},
        "seq_len": lc.seq_len,
        "overlap": lc.overlap,
        "tokenizer": tok.describe(),
        "config": config,
        "counts": {
            "documents": len(kinds),
            "documents_by_kind": dict(sorted(by_kind_docs.items())),
            "document_tokens": int(n_tokens.sum()),
            "document_tokens_by_kind": dict(sorted(by_kind_tokens.items())),
            "samples": samples,
            "tokens": tokens,
            "shards": len(shard_stats),
            "rejects": len(rejects),
            "rejects_by_reason": dict(sorted(Counter(r["reason"] for r in rejects).items())),
        },
        "fill_rate": round(tokens / (samples * lc.seq_len), 6) if samples else 0.0,
        "lower_bound_samples": -(-int(n_tokens.sum()) // lc.seq_len),
        "packing": plan_summary.get("packing", {}),
        "mixture": plan_summary.get("mixture"),
        "dependency_order": {
            "edges": int(np.asarray(docs.column("dependency_edges")).sum()),
            "files_on_cycles": int(np.asarray(docs.column("cycle_files")).sum()),
            "unparsed_source_files": int(np.asarray(docs.column("unparsed_files")).sum()),
        },
        "documents": "documents.arrow",
        "rejects": "rejects.jsonl",
        "report": "report/summary.md",
        "shards": [{k: s[k] for k in ("path", "rows", "tokens", "sha256")} for s in shard_stats],
    }


def check_mix_against_sources(weights, sources) -> None:
    """--mix naming a kind no input can provide is an argument error, found before any work."""
    if not weights or any(s.kind == "records" for s in sources):
        return  # records files may hold either kind; checked when the plan is made
    kinds = {"book" if s.kind == "book" else "code" for s in sources}
    missing = sorted(k for k, w in weights.items() if w > 0 and k not in kinds)
    if missing:
        raise UsageError(f"--mix asks for {', '.join(missing)} but no input of that kind is given")


@dataclass
class Job:
    """Everything :func:`prepare` decided, for :func:`execute` and :func:`finalize`."""

    options: PipelineOptions
    lc: LongctxOptions
    tok: object
    demo: bool
    sources: list
    discovery_rejects: list
    plotter: PlotRenderer
    say: object


def prepare(argv: list[str]) -> Job:
    """Parse and check everything that can be checked before anything is written; raises
    :class:`RunRefused` (bad flag: 2, unusable input: 3, no disk space: 6)."""
    argv = expand_config(argv)
    options = PipelineOptions(argv)
    lc = options.view_as(LongctxOptions)
    logging.getLogger().setLevel(lc.log_level)
    check_runner(options)
    check_arguments(argv)  # after check_runner: it imports the runner and its option classes
    validate(lc)
    # the report's plots: helper processes import matplotlib while the pipeline runs
    plotter = PlotRenderer()
    try:
        try:
            tok = load_tokenizer(lc.tokenizer, lc.trust_remote_code)
        except TokenizerError as err:
            raise UsageError(str(err)) from None
        check_inputs(lc, read_limits(lc))
        demo = not (lc.books or lc.repos or lc.repos_root or lc.documents)
        repos = demo_repositories() if demo else lc.repos
        sources, discovery_rejects = discover(
            books=lc.books,
            repos=repos,
            repos_root=lc.repos_root,
            documents=lc.documents,
            text_field=lc.text_field,
        )
        check_mix_against_sources(mix_weights(lc), sources)
        if not lc.skip_space_check:
            check_free_space(
                lc.output,
                [s.path for s in sources],
                seq_len=lc.seq_len,
                overlap=lc.overlap,
                incremental=lc.incremental,
            )
    except BaseException:
        plotter.close()
        raise
    say = (lambda *a, **k: None) if lc.quiet else print
    return Job(options, lc, tok, demo, sources, discovery_rejects, plotter, say)


def read_limits(lc: LongctxOptions) -> ReadLimits:
    return ReadLimits(max_file_bytes=int(lc.max_file_mb * 2**20))


def execute(job: Job, staging: str, tokens_cache: str | None) -> None:
    """Run the Beam pipeline; its results land in ``staging``."""
    lc = job.lc
    pipeline = beam.Pipeline(runner=make_runner(job.options), options=job.options)
    _ = pipeline | "BuildDataset" >> BuildDataset(
        sources=job.sources,
        discovery_rejects=job.discovery_rejects,
        tokenizer_spec=lc.tokenizer,
        trust_remote_code=lc.trust_remote_code,
        cache_dir=tokens_cache,
        limits=read_limits(lc),
        seq_len=lc.seq_len,
        overlap=lc.overlap,
        samples_per_shard=max(1, int(lc.shard_mb * 2**20) // (4 * lc.seq_len)),
        fmt=lc.shard_format,
        staging=staging,
        slack=boundary_slack(lc),
        mix=mix_weights(lc),
        seed=lc.seed,
        min_score=lc.min_dependency_score,
        dedup=lc.dedup,
        fill_gaps=lc.fill_gaps,
        progress=not lc.quiet and (sys.stderr.isatty() or bool(os.environ.get("LONGCTX_PROGRESS"))),
    )
    result = pipeline.run()
    result.wait_until_finish()


def _previous_manifest(out: str) -> dict | None:
    path = FileSystems.join(out, MANIFEST)
    return read_json(path) if FileSystems.exists(path) else None


def finalize(job: Job, staging: str, tokens_cache: str | None, cached_before: set) -> dict:
    """Build the manifest, refuse a worse dataset (guard.check_result), write the report and
    publish; returns the manifest. Nothing in ``--output`` changes before the guards pass."""
    lc = job.lc
    shard_stats = read_json(FileSystems.join(staging, "shards.json"))
    plan_summary = read_json(FileSystems.join(staging, "plan.json"))
    docs = read_table(FileSystems.join(staging, "documents.arrow"))
    rejects = [
        json.loads(line)
        for line in read_text(FileSystems.join(staging, "rejects.jsonl")).splitlines()
    ]
    manifest = build_manifest(
        lc=lc,
        config=effective_config(lc, job.options, job.demo),
        tok=job.tok,
        docs=docs,
        shard_stats=shard_stats,
        rejects=rejects,
        plan_summary=plan_summary,
    )
    counts = manifest["counts"]
    check_result(counts, counts["rejects_by_reason"], _previous_manifest(lc.output), lc)
    if tokens_cache:
        used = set(plan_summary.get("cache_keys", []))
        manifest["incremental"] = {
            "documents_reused": len(used & cached_before),
            "documents_tokenized": len(used - cached_before),
        }
    sample_tokens = np.array([t for s in shard_stats for t in s["sample_tokens"]], dtype=np.int64)
    write_report(
        FileSystems.join(staging, "report"),
        manifest=manifest,
        docs=docs,
        sample_tokens=sample_tokens,
        rejects=rejects,
        plotter=job.plotter,
    )
    FileSystems.delete(
        [FileSystems.join(staging, "shards.json"), FileSystems.join(staging, "plan.json")]
    )
    publish(lc.output, staging, manifest)
    if tokens_cache:
        cache.prune(tokens_cache, set(plan_summary.get("cache_keys", [])))
    return manifest


def build_and_publish(job: Job) -> dict:
    """Under the output's lock: stage, execute, finalize; a failure or refusal removes the
    staging folder and leaves the previous output as it was."""
    out = job.lc.output
    staging = prepare_staging(out)
    try:
        tokens_cache = cache.cache_dir(out) if job.lc.incremental else None
        cached_before = cache.keys(tokens_cache) if tokens_cache else set()
        execute(job, staging, tokens_cache)
        return finalize(job, staging, tokens_cache, cached_before)
    except BaseException as err:
        discard_staging(staging)
        if is_no_space(err):
            raise NoSpace(
                f"--output {out}: the disk filled up while writing (no space left on device); "
                "the partial output was removed and the previous output kept"
            ) from None
        raise


def run(argv: list[str] | None = None) -> int:
    """Run the pipeline; returns the exit status (the table in ``pipeline/errors.py``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        job = prepare(argv)
    except RunRefused as err:
        print(f"error: {err}", file=sys.stderr)
        return err.status
    lc, say = job.lc, job.say
    if job.demo:
        say(
            f"No --books/--repos/--repos-root/--documents given: running on the embedded demo "
            f"corpus ({len(job.sources)} packages of this Python's standard library as "
            "repositories)."
        )
    started = time.time()
    try:
        with OutputLock(lc.output):
            manifest = build_and_publish(job)
    except RunRefused as err:
        print(f"error: {err}", file=sys.stderr)
        return err.status
    except Exception:
        _LOG.exception("the pipeline failed; %s was left as it was", lc.output)
        return FAILURE
    finally:
        job.plotter.close()
    c = manifest["counts"]
    say(
        f"Wrote {lc.output}/ in {time.time() - started:.1f}s: {c['documents']} documents "
        f"({c['document_tokens']:,} tokens), {c['samples']} samples of <= {lc.seq_len} tokens "
        f"in {c['shards']} shard(s), fill rate {manifest['fill_rate']:.4f}, "
        f"{c['rejects']} rejected inputs (rejects.jsonl)."
    )
    say(
        f"Manifest: {os.path.join(lc.output, MANIFEST)}  "
        f"Report: {os.path.join(lc.output, 'report', 'summary.md')}"
    )
    return OK


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
