"""Books and code repositories in, packed Arrow shards out.

    python -m pipeline.run --runner DirectRunner                       # embedded demo corpus
    python -m pipeline.run --runner DirectRunner \\
        --books ../shared/data/books --repos ~/src/myrepo \\
        --tokenizer ../shared/data/tokenizers/qwen3 --seq-len 65536 --output out

A run is prepare -> execute -> finalize (``pipeline/job.py``). This module is the command
line: ``--help``, ``--config`` expansion and the flags' values are checked before Apache Beam is
imported (about 0.9 s), so a typo or a bad value costs no Beam start-up.

Exit status (``pipeline/errors.py``): 0 output complete (rejected inputs are listed in
rejects.jsonl), 2 an unusable flag, 3 an input yields nothing usable, 4 an ``--incremental`` run
would shrink the dataset past ``--shrink-threshold``, 5 another run holds the output folder,
6 not enough disk space, 1 any other failure. In every case but 0 the previous output is left
as it was. Every Beam option passes through (``--runner``, ``--direct_running_mode``,
``--direct_num_workers``, Dataflow/Flink/Spark).
"""

from __future__ import annotations

import logging
import sys
import time

from pipeline.config_file import expand_config
from pipeline.errors import FAILURE, OK, RunRefused, exit_now
from pipeline.head_start import HeadStart, dask_address
from pipeline.lock import OutputLock
from pipeline.options import check_values, help_text
from pipeline.tokenizer_probe import TokenizerProbe
from pipeline.worker_pool import WorkerPool, planned_workers

_LOG = logging.getLogger("longctx")


def run(argv: list[str] | None = None, *, lean_beam: bool = False) -> int:
    """Run the pipeline; returns the exit status (the table in ``pipeline/errors.py``).
    ``lean_beam``: import Beam without the connectors the pipeline never uses
    (``pipeline/beam_import.py``), for a process that runs nothing else (the command line)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(help_text())
        return OK
    try:
        argv = expand_config(argv)
        config = check_values(argv)
    except RunRefused as err:
        print(f"error: {err}", file=sys.stderr)
        return err.status
    # multi_processing: the process the workers are forked from starts importing Beam now,
    # beside the driver
    workers = WorkerPool.for_run(argv, config) if config else None
    # and the idle cores tokenize the largest sources until the workers begin (or the idle
    # workers of a Dask cluster on this machine do)
    ahead = (
        HeadStart.for_run(config, planned_workers(argv), dask=dask_address(argv))
        if config
        else None
    )
    # and the tokenizer is checked in a helper process, beside the driver's Beam import (the
    # head start's, which loads it anyway, where there is one)
    tokenizer = (
        TokenizerProbe(
            config.tokenizer,
            config.trust_remote_code,
            answer=ahead.tokenizer_answer if ahead and ahead.answers else None,
        )
        if config
        else None
    )
    try:
        return _run(argv, workers, tokenizer, ahead, lean_beam)
    finally:
        if ahead:
            ahead.close()
        if workers:
            workers.close()
        if tokenizer:
            tokenizer.close()


def _run(
    argv: list[str],
    workers: WorkerPool | None,
    tokenizer: TokenizerProbe | None,
    ahead: HeadStart | None = None,
    lean_beam: bool = False,
) -> int:
    try:
        from pipeline.beam_import import import_beam, no_collections

        with no_collections():  # Beam's and the pipeline's imports, on every run's path
            if lean_beam:
                import_beam()
            from pipeline.job import build_and_publish, prepare, summary

        job = prepare(argv, workers, tokenizer, ahead)
    except RunRefused as err:
        print(f"error: {err}", file=sys.stderr)
        return err.status
    if job.config.demo:
        job.say(
            f"No --books/--repos/--repos-root/--documents/--hf-dataset given: running on the "
            "embedded demo "
            f"corpus ({len(job.sources)} packages of this Python's standard library as "
            "repositories)."
        )
    started = time.time()
    try:
        with OutputLock(job.config.output):
            manifest = build_and_publish(job)
    except RunRefused as err:
        print(f"error: {err}", file=sys.stderr)
        return err.status
    except Exception:
        _LOG.exception("the pipeline failed; %s was left as it was", job.config.output)
        return FAILURE
    finally:
        job.plotter.close()
    summary(job, manifest, time.time() - started)
    return OK


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # the run's work is written and its summary printed: the interpreter's teardown of Beam and
    # every other module (~0.25 s) is skipped
    exit_now(run(lean_beam=True))


if __name__ == "__main__":
    main()
