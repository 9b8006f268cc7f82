"""Books and code repositories in, packed Arrow shards out.

    python -m pipeline.run --runner DirectRunner                       # embedded demo corpus
    python -m pipeline.run --runner DirectRunner \\
        --books ../shared/data/books --repos ~/src/myrepo \\
        --tokenizer ../shared/data/tokenizers/qwen3 --seq-len 65536 --output out

Exit status: 0 output complete (rejected inputs are listed in rejects.jsonl), 2 unusable
arguments (the message names the flag or path), 1 any other failure. Every Beam option passes
through (``--runner``, ``--direct_running_mode``, ``--direct_num_workers``, Dataflow/Flink/Spark).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import __version__, cache, remote
from pipeline.config_file import expand_config
from pipeline.demo import demo_repositories
from pipeline.discover import discover
from pipeline.options import (
    LongctxOptions,
    UsageError,
    boundary_slack,
    check_arguments,
    mix_weights,
    validate,
)
from pipeline.output import (
    MANIFEST,
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


def run(argv: list[str] | None = None) -> int:
    """Run the pipeline; returns the exit status (0 complete, 2 bad arguments, 1 failure)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        argv = expand_config(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    options = PipelineOptions(argv)
    lc = options.view_as(LongctxOptions)
    logging.getLogger().setLevel(lc.log_level)
    say = (lambda *a, **k: None) if lc.quiet else print
    plotter = None
    try:
        check_runner(options)
        check_arguments(argv)  # after check_runner: it imports the runner and its option classes
        validate(lc)
        # the report's plots: helper processes import matplotlib while the pipeline runs
        plotter = PlotRenderer()
        try:
            tok = load_tokenizer(lc.tokenizer, lc.trust_remote_code)
        except TokenizerError as err:
            raise UsageError(str(err)) from None
        demo = not (lc.books or lc.repos or lc.repos_root or lc.documents)
        repos = demo_repositories() if demo else lc.repos
        sources, discovery_rejects = discover(
            books=lc.books, repos=repos, repos_root=lc.repos_root, documents=lc.documents
        )
        check_mix_against_sources(mix_weights(lc), sources)
    except UsageError as err:
        if plotter:
            plotter.close()
        print(f"error: {err}", file=sys.stderr)
        return 2
    if demo:
        say(
            f"No --books/--repos/--repos-root/--documents given: running on the embedded demo "
            f"corpus ({len(sources)} packages of this Python's standard library as repositories)."
        )
    started = time.time()
    out = lc.output
    try:
        staging = prepare_staging(out)
        tokens_cache = cache.cache_dir(out) if lc.incremental else None
        cached_before = cache.keys(tokens_cache) if tokens_cache else set()
        samples_per_shard = max(1, int(lc.shard_mb * 2**20) // (4 * lc.seq_len))
        pipeline = beam.Pipeline(runner=make_runner(options), options=options)
        _ = pipeline | "BuildDataset" >> BuildDataset(
            sources=sources,
            discovery_rejects=discovery_rejects,
            tokenizer_spec=lc.tokenizer,
            trust_remote_code=lc.trust_remote_code,
            cache_dir=tokens_cache,
            limits=ReadLimits(max_file_bytes=int(lc.max_file_mb * 2**20)),
            seq_len=lc.seq_len,
            overlap=lc.overlap,
            samples_per_shard=samples_per_shard,
            fmt=lc.shard_format,
            staging=staging,
            slack=boundary_slack(lc),
            mix=mix_weights(lc),
            seed=lc.seed,
            min_score=lc.min_dependency_score,
            dedup=lc.dedup,
            fill_gaps=lc.fill_gaps,
            progress=not lc.quiet
            and (sys.stderr.isatty() or bool(os.environ.get("LONGCTX_PROGRESS"))),
        )
        result = pipeline.run()
        result.wait_until_finish()
        shard_stats = read_json(FileSystems.join(staging, "shards.json"))
        plan_summary = read_json(FileSystems.join(staging, "plan.json"))
        docs = read_table(FileSystems.join(staging, "documents.arrow"))
        import json

        rejects = [
            json.loads(line)
            for line in read_text(FileSystems.join(staging, "rejects.jsonl")).splitlines()
        ]
        manifest = build_manifest(
            lc=lc,
            config=effective_config(lc, options, demo),
            tok=tok,
            docs=docs,
            shard_stats=shard_stats,
            rejects=rejects,
            plan_summary=plan_summary,
        )
        if tokens_cache:
            used = set(plan_summary.get("cache_keys", []))
            manifest["incremental"] = {
                "documents_reused": len(used & cached_before),
                "documents_tokenized": len(used - cached_before),
            }
        sample_tokens = np.array(
            [t for s in shard_stats for t in s["sample_tokens"]], dtype=np.int64
        )
        write_report(
            FileSystems.join(staging, "report"),
            manifest=manifest,
            docs=docs,
            sample_tokens=sample_tokens,
            rejects=rejects,
            plotter=plotter,
        )
        FileSystems.delete(
            [FileSystems.join(staging, "shards.json"), FileSystems.join(staging, "plan.json")]
        )
        publish(out, staging, manifest)
        if tokens_cache:
            cache.prune(tokens_cache, set(plan_summary.get("cache_keys", [])))
    except Exception:
        _LOG.exception("the pipeline failed; %s holds no finished output", out)
        return 1
    finally:
        plotter.close()
    c = manifest["counts"]
    say(
        f"Wrote {out}/ in {time.time() - started:.1f}s: {c['documents']} documents "
        f"({c['document_tokens']:,} tokens), {c['samples']} samples of <= {lc.seq_len} tokens "
        f"in {c['shards']} shard(s), fill rate {manifest['fill_rate']:.4f}, "
        f"{c['rejects']} rejected inputs (rejects.jsonl)."
    )
    say(
        f"Manifest: {os.path.join(out, MANIFEST)}  Report: {os.path.join(out, 'report', 'summary.md')}"
    )
    return 0


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
