"""Start a local Dask cluster for ``--runner DaskRunner`` and keep it up until Ctrl-C (SIGINT)
or SIGTERM.

    python -m pipeline.dask_cluster --workers 2 --port 8786 &
    python -m pipeline.run --runner DaskRunner \\
        --dask_client_address=127.0.0.1:8786 --books ../shared/data/books --output out
    kill %1

Needs ``pip install 'apache-beam[dask]'`` (dask and distributed). Workers are separate
processes with one thread each (the tokenizer brings its own threads: cores // workers of them
each, through ``RAYON_NUM_THREADS``, unless it is set already), started in this folder, so
they import this checkout's code. Restart the cluster after changing the code: running
workers keep the modules they imported first.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

PRELOAD = "pipeline.dask_preload"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.dask_cluster", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--port", type=int, default=8786, help="scheduler port (default 8786)")
    parser.add_argument(
        "--memory-limit",
        default="auto",
        help="per worker, e.g. 4GiB (default auto: the machine's memory / workers)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    try:
        import distributed  # noqa: F401
    except ImportError:
        print(
            "error: the Dask cluster needs dask.distributed: pip install 'apache-beam[dask]'",
            file=sys.stderr,
        )
        return 2
    from pipeline.worker_pool import TOKENIZER_THREADS, tokenizer_threads

    # the workers inherit it: one tokenizer thread pool per worker, not one thread per core each
    os.environ.setdefault(
        TOKENIZER_THREADS, str(tokenizer_threads(os.cpu_count() or 1, args.workers))
    )
    # before the cluster starts and its address is printed (a script that reads the address
    # may signal at once): SIGTERM, and SIGINT also where it came in ignored (a job started
    # with & in a script), so Ctrl-C or kill -INT stops it
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    # the workers and the scheduler import what the pipeline's tasks need as they start, not
    # inside the first run (pipeline/dask_preload.py); the settings for the cluster's whole
    # life: a nanny that starts its worker again (a crash, the memory limit, a restart) reads
    # them then
    with cluster_settings():
        cluster = _start(args)
        address = cluster.scheduler_address.replace("tcp://", "")
        print(f"Dask scheduler at {address} with {args.workers} worker processes.", flush=True)
        print(f"Run with: --runner DaskRunner --dask_client_address={address}", flush=True)
        while not stop:
            time.sleep(0.5)
        cluster.close()
    return 0


# The settings of distributed that the pipeline's work wants, for a cluster this process starts
# (pipeline.runners.translation_settings gives Beam's own local cluster the same); a value the
# user chose stands (cluster_settings). For a cluster started otherwise (``dask scheduler`` /
# ``dask worker``), the same as a dask YAML file (e.g. ~/.config/dask/longctx.yaml)::
#
#     distributed:
#       scheduler:
#         worker-saturation: 1.0
#       nanny:
#         pre-spawn-environ:
#           MALLOC_TRIM_THRESHOLD_: null
#       worker:
#         profile:
#           enabled: false
#       admin:
#         tick:
#           interval: 1s
#         system-monitor:
#           interval: 2s
SATURATION = "distributed.scheduler.worker-saturation"
TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
TRIM_ENV = "MALLOC_TRIM_THRESHOLD_"  # a nanny passes on the environment's value over the config's
PROFILE = "distributed.worker.profile.enabled"
TICK = "distributed.admin.tick.interval"
MONITOR = "distributed.admin.system-monitor.interval"
SETTINGS = {
    SATURATION: 1.0,
    TRIM: None,  # distributed's way to leave a pre-spawn variable unset
    PROFILE: False,
    TICK: "1s",
    MONITOR: "2s",
}


def env_name(key: str) -> str:
    """The environment variable dask reads a config key from (dask takes any case after
    ``DASK_``)."""
    return "DASK_" + "__".join(part.upper().replace("-", "_") for part in key.split("."))


SATURATION_ENV = env_name(SATURATION)


def cluster_settings():
    """A context for starting a cluster's scheduler, nannies and workers (and for its life: a
    nanny that starts its worker again reads them then), with these of distributed's settings
    changed (``SETTINGS``) unless the user chose a value: in the environment, in a dask YAML
    file, or in ``dask.config`` as something other than distributed's own default (a value set
    in code equal to the default cannot be told from it):

    - ``distributed.scheduler.worker-saturation`` 1.0. Dask's default, 1.1, rounds up to two
      tasks on a worker of one thread: each worker holds the next group of sources while it
      works on one, so at the end a slow worker can still hold a group of several seconds that
      an idle worker could have run. At 1.0 the groups not started wait at the scheduler and go
      to whichever worker is free first.
    - no ``MALLOC_TRIM_THRESHOLD_`` in the workers' environment (distributed's nannies set
      65536 before they start a worker). Setting glibc's trim threshold (as its top pad, mmap
      threshold or mmap max) turns off its sliding mmap threshold, so every buffer of 128 KiB
      or more (a document's text, the tokenizer's encodings, the token arrays) is mapped fresh
      and its pages faulted in and zeroed again: tokenizing the shared books in one process
      took 17x the page faults and 1.16x the time (benchmarks/encode_env.py). 16 workers,
      300 MB: 0.88x the wall time without it (docs/benchmarks.md, "Session 20").
    - the workers' statistical profiler off (``distributed.worker.profile.enabled``; on Python
      other than 3.11 it also samples the event loop's stack every 10 ms, in a thread), the
      event loop's responsiveness check every second instead of every 20 ms
      (``distributed.admin.tick.interval``) and its system monitor every 2 s instead of 0.5
      (``distributed.admin.system-monitor.interval``). Each is a wake-up that takes the GIL
      from the task thread between its tokenizer calls: 16 workers, 300 MB, 0.92x the wall
      time (the three together). The dashboard's profile page is empty then."""
    import dask
    import distributed  # noqa: F401 - registers its defaults with dask.config

    yaml = list(dask.config.collect_yaml(dask.config.paths))
    changes = {key: value for key, value in SETTINGS.items() if not _chosen(key, yaml)}
    return dask.config.set(changes)


def _chosen(key: str, yaml: list[dict]) -> bool:
    """Did the user set ``key``: in the environment, in one of dask's YAML files (``yaml``,
    as ``dask.config.collect_yaml`` reads them), or in ``dask.config`` to something other than
    distributed's default?"""
    import dask

    if key == TRIM:  # dask lower-cases a DASK_ variable's name: the nanny's key is not reached
        if TRIM_ENV in os.environ:
            return True
    elif env_name(key) in {name.upper() for name in os.environ}:
        return True
    if any(_lookup(config, key) is not _MISSING for config in yaml):
        return True
    return dask.config.get(key, None) != _shipped(key)


_MISSING = object()


def _lookup(config: dict, key: str):
    """``key``'s value in a nested config dict (``-`` and ``_`` alike, as dask has them), or
    ``_MISSING``."""
    value = config
    for part in key.split("."):
        if not isinstance(value, dict):
            return _MISSING
        names = {part, part.replace("-", "_"), part.replace("_", "-")}
        found = next((k for k in value if k in names), None)
        if found is None:
            return _MISSING
        value = value[found]
    return value


def _shipped(key: str):
    """distributed's own default for a dotted config key (its YAML, as registered in
    dask.config), or None."""
    import dask

    for defaults in dask.config.defaults:
        value = defaults
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            return value
    return None


def _start(args):
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=args.workers,
        threads_per_worker=1,
        processes=True,
        scheduler_port=args.port,
        dashboard_address=None,
        memory_limit=args.memory_limit,
        preload=[PRELOAD],
        scheduler_kwargs={"preload": [PRELOAD]},
    )


if __name__ == "__main__":
    sys.exit(main())
