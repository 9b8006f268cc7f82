"""Runner selection and fail-fast checks: a runner that cannot be used stops the run up front
(exit 2) with a message naming the runner and what to install or start.

Tested here: DirectRunner (in_memory, multi_processing), PortableRunner with
``--job_endpoint=embed --environment_type=LOOPBACK``, DaskRunner on a local cluster
(``python -m pipeline.dask_cluster``). Flink, Spark and Dataflow are Beam's own runners,
reached through the same options (README "Scaling out").
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import run_folders
from pipeline.errors import UsageError
from pipeline.head_start import reachable
from pipeline.worker_pool import TOKENIZER_THREADS, WorkerPool, serve_workers, worker_environment

DASK = "apache_beam.runners.dask.dask_runner.DaskRunner"
_ALIASES = {"DaskRunner": DASK}
_LOG = logging.getLogger("longctx")
KNOWN = (
    f"DirectRunner, PortableRunner, FlinkRunner, SparkRunner, DataflowRunner, PrismRunner, {DASK}"
)


def check_runner(options: PipelineOptions) -> None:
    """Raise UsageError when the chosen runner cannot run here."""
    std = options.view_as(StandardOptions)
    name = std.runner or "DirectRunner"
    if name in _ALIASES:
        std.runner = name = _ALIASES[name]
    if name in ("DirectRunner", "direct", "BundleBasedDirectRunner", "SwitchingDirectRunner"):
        return
    from apache_beam.runners.runner import create_runner

    try:
        create_runner(name)
    except ImportError as err:
        extra = "dask" if "dask" in name.lower() else "gcp" if "Dataflow" in name else "..."
        raise UsageError(
            f"--runner {name}: cannot be loaded ({err}); pip install 'apache-beam[{extra}]'"
        ) from None
    except (ValueError, AttributeError, TypeError):
        raise UsageError(f"--runner {name}: unknown runner (known: {KNOWN})") from None
    opts = options.get_all_options()
    if name == DASK:
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise UsageError(
                f"--runner {name}: needs dask.distributed: pip install 'apache-beam[dask]'"
            ) from None
        from apache_beam.runners.dask.dask_runner import DaskOptions

        address = options.view_as(DaskOptions).address
        if address and not reachable(address):
            raise UsageError(
                f"--runner {name}: no Dask scheduler answers at --dask_client_address={address};"
                " start one with: python -m pipeline.dask_cluster --workers 2"
            )
    if name in ("PortableRunner", "FlinkRunner", "SparkRunner"):
        endpoint = opts.get("job_endpoint")
        if endpoint and endpoint != "embed" and not reachable(endpoint):
            raise UsageError(
                f"--runner {name}: no job server answers at --job_endpoint={endpoint}; start the "
                "Flink/Spark job server there, or use --job_endpoint=embed for a local run"
            )
        if name in ("FlinkRunner", "SparkRunner") and not endpoint and not shutil.which("java"):
            raise UsageError(
                f"--runner {name}: needs Java 11+ to start Beam's {name[:-6]} job server (its jar "
                "is downloaded on first use), or --job_endpoint=HOST:PORT of a running one"
            )


def make_runner(options: PipelineOptions, workers: WorkerPool | None = None):
    """``DirectRunner`` without its Prism attempt; under ``multi_processing`` its worker
    processes come from ``workers`` where given (``pipeline/worker_pool.py``).

    Beam 2.77's DirectRunner first tries Prism, which downloads a Go binary; offline that fails
    (after network timeouts) and it falls back to the FnApiRunner. We go to the FnApiRunner
    directly, exactly as DirectRunner's fallback builds it, so ``--direct_running_mode`` and
    ``--direct_num_workers`` keep working. Any other ``--runner`` is left to Beam (DaskRunner
    after :func:`register_dask_translations`).
    """
    runner = options.view_as(StandardOptions).runner
    if _is_dask(options):
        register_dask_translations()
        return None
    if runner not in (None, "DirectRunner", "direct"):
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    )
    stop_workers_together()
    serve_workers(workers)
    return fn_runner.FnApiRunner(provision_info=info)


def _close_handler(handler) -> None:
    try:
        handler.close()
    except Exception:  # as Beam's own close_all: a worker that fails to stop is logged
        _LOG.error("Error closing worker_handler %s", handler, exc_info=True)


def stop_workers_together() -> None:
    """Make the FnApiRunner stop its worker processes all at once at the end of a run.

    Beam 2.77's ``WorkerHandlerManager.close_all`` closes one worker's connection, waits for
    its process to exit (~0.2 s), then goes to the next: 16 multi_processing workers took 3 s
    or more after the last shard was written. Patched once here so that every worker is closed
    from its own thread, then Beam's ``close_all`` does the rest (its gRPC server); where a
    later Beam keeps its workers elsewhere, its own ``close_all`` runs unchanged."""
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    manager = worker_handlers.WorkerHandlerManager
    beam_close_all = manager.close_all
    if getattr(beam_close_all, "_longctx", False):
        return

    def close_all(self):
        cached = getattr(self, "_cached_handlers", None)  # a later Beam may keep them elsewhere
        handlers = {h for group in cached.values() for h in group} if cached else set()
        if len(handlers) > 1:
            with ThreadPoolExecutor(len(handlers), thread_name_prefix="longctx-stop") as pool:
                list(pool.map(_close_handler, handlers))
            self._cached_handlers = collections.defaultdict(list)
        beam_close_all(self)

    close_all._longctx = True
    manager.close_all = close_all


def share_cores(options: PipelineOptions, environ=os.environ) -> int | None:
    """With ``--direct_running_mode multi_processing`` and N workers, give each worker's tokenizer
    cores // N threads (``RAYON_NUM_THREADS`` in the environment the workers inherit), instead
    of N pools of one thread per core each; returns the count set, or None (other modes, or the
    variable already set by the user, which wins). Measured on 2 cores, N = 2: 32.6 -> 29.3 s on
    60 MB (docs/benchmarks.md, "Parallel scaling")."""
    from apache_beam.options.pipeline_options import DirectOptions

    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode != "multi_processing" or TOKENIZER_THREADS in environ:
        return None
    workers = direct.direct_num_workers or os.cpu_count() or 1  # 0: one per core (Beam's rule)
    threads = worker_environment(workers, environ).get(TOKENIZER_THREADS)  # the pool's rule
    if threads is None:  # one worker: its tokenizer has every core
        return None
    environ[TOKENIZER_THREADS] = threads
    return int(threads)


def static_workers(options: PipelineOptions) -> int | None:
    """The worker count over which the runner splits each step's input once, in fixed shares,
    with no rebalancing: DirectRunner ``multi_processing`` with N > 1 workers (Beam 2.77's
    FnApiRunner deals the keys of a grouped input round-robin over its N workers; so does
    ``SwitchingDirectRunner``, which runs the same FnApiRunner). None for every other runner
    (Dataflow, Flink and Spark rebalance their work themselves)."""
    from apache_beam.options.pipeline_options import DirectOptions

    runner = options.view_as(StandardOptions).runner
    direct = options.view_as(DirectOptions)
    if runner not in (None, "DirectRunner", "direct", "SwitchingDirectRunner"):
        return None
    if direct.direct_running_mode != "multi_processing":
        return None
    workers = direct.direct_num_workers or os.cpu_count() or 1  # 0: one per core (Beam's rule)
    return workers if workers > 1 else None


def _is_dask(options: PipelineOptions) -> bool:
    """Whether ``--runner`` is a DaskRunner (the alias or Beam's class path)."""
    return "dask" in str(options.view_as(StandardOptions).runner or "").lower()


def emits_from_finish_bundle(options: PipelineOptions) -> bool:
    """Whether the runner keeps what a DoFn emits from ``finish_bundle`` (the tokenize step's
    last batch). Beam 2.77's DaskRunner drops it (the documents would be lost; found by
    ``tests/test_runners.py``), so the tokenize step does not batch there."""
    return not _is_dask(options)


def computes_side_inputs_once(options: PipelineOptions) -> bool:
    """Whether the runner computes a side input once. Beam 2.77's DaskRunner computes it inside
    each task that reads it, by running the graph above it again (``DaskBagWindowedIterator``
    lists the bag): with duplicate removal's side input every source was read twice (counted
    by ``tests/test_runners.py``), and every collect read and tokenized the corpus once more,
    so the graph reads no side input there."""
    return not _is_dask(options)


@dataclasses.dataclass(frozen=True)
class RunnerTraits:
    """What the run's graph (``BuildDataset``) allows for in the runner it runs on. The
    defaults are every runner's but Beam 2.77's DaskRunner (:func:`runner_traits`);
    ``partitions`` is for DaskRunner only (no other runner knows ``Repartition``)."""

    # the runner keeps what a DoFn emits from finish_bundle (emits_from_finish_bundle): the
    # tokenize step batches documents across process() calls
    finish_bundle_outputs: bool = True
    # the runner computes a side input once (computes_side_inputs_once); else the graph
    # reads none
    side_inputs_once: bool = True
    # DaskRunner: a collection keeps its partitions through every step, so the small
    # collections are gathered into one before they are shuffled, and the shard writing is
    # spread over this many partitions again (Repartition); None elsewhere
    partitions: int | None = None


def runner_traits(options: PipelineOptions, groups: list | None = None) -> RunnerTraits:
    """The traits of ``--runner``; ``groups``: the sources' groups on DaskRunner
    (``pipeline.job.source_groups``), whose count the shard writing is spread over."""
    if not _is_dask(options):
        return RunnerTraits()
    return RunnerTraits(
        finish_bundle_outputs=emits_from_finish_bundle(options),
        side_inputs_once=computes_side_inputs_once(options),
        partitions=dask_spread(options, groups),
    )


def register_dask_translations() -> None:
    """Teach Beam 2.77's DaskRunner the pipeline's own primitives (``pipeline/steps/common.py``):
    ``Repartition`` as ``dask.bag.Bag.repartition``, ``BroadcastJoin`` as
    ``dask.bag.Bag.map_partitions`` with the small side as one ``dask.delayed`` dict. Beam's
    DaskRunner looks each primitive up by class in its ``TRANSLATIONS`` table (an unknown one
    passes its input on unchanged), so this adds two entries to that table, once."""
    from apache_beam.runners.dask import transform_evaluator

    from pipeline.steps.common import BroadcastJoin, Repartition

    class RepartitionOp(transform_evaluator.DaskBagOp):
        def apply(self, input_bag, side_inputs=None):
            return input_bag.repartition(npartitions=self.transform.partitions)

    class BroadcastJoinOp(transform_evaluator.DaskBagOp):
        def apply(self, input_bag, side_inputs=None):
            import dask

            # the visitor passes the inputs' bags in the order of the node's main inputs
            bags = dict(zip(self.applied.main_inputs, input_bag, strict=True))
            main, small = self.transform.main, self.transform.small
            # one task makes the dict; each worker fetches it once. Not optimized on its own:
            # its keys must stay those of the graph the texts come from, or every source is
            # read twice (counted by tests/test_runners.py)
            (whole,) = bags[small].repartition(npartitions=1).to_delayed(optimize_graph=False)
            table = dask.delayed(_by_key, pure=True)(whole)
            return bags[main].map_partitions(_join_partition, table, main, small)

    transform_evaluator.TRANSLATIONS.setdefault(Repartition, RepartitionOp)
    transform_evaluator.TRANSLATIONS.setdefault(BroadcastJoin, BroadcastJoinOp)


def _by_key(pairs) -> dict:
    """DaskRunner's ``BroadcastJoin``: its small side's ``(key, value)`` s ->
    ``{key: [value...]}``."""
    from apache_beam.runners.dask.transform_evaluator import defenestrate

    out: dict = {}
    for pair in pairs:
        k, v = defenestrate(pair)
        out.setdefault(k, []).append(v)
    return out


def _join_partition(elements, table: dict, main: str, small: str) -> list:
    """DaskRunner's ``BroadcastJoin``: one partition of its main side joined with ``table``, as
    ``CoGroupByKey`` gives it: ``(key, {main: [value], small: [its values...]})`` each."""
    from apache_beam.runners.dask.transform_evaluator import defenestrate

    out = []
    for element in elements:
        k, v = defenestrate(element)
        out.append((k, {main: [v], small: table.get(k, [])}))
    return out


def translation_settings(options: PipelineOptions):
    """A context for ``Pipeline.run()``, where Beam's DaskRunner translates the graph (and,
    without ``--dask_client_address``, starts its own local cluster): nothing on other runners.

    - the shuffle dask.bag's groupby picks with a distributed client anyway (``tasks``), said
      outright, which spares the driver dask.dataframe's import (~0.45 s) that finding it out
      costs; never over a method the user set;
    - for Beam's own local cluster, whose scheduler and nannies start in this process, the
      settings of ``python -m pipeline.dask_cluster`` (``pipeline.dask_cluster.
      cluster_settings``: one group of sources a worker thread at a time, and glibc's own
      malloc thresholds in the workers).

    While the pipeline runs: a nanny of Beam's own cluster that starts a worker again (after a
    crash or the memory limit) reads the settings of that moment."""
    return _dask_settings() if _is_dask(options) else contextlib.nullcontext()


@contextlib.contextmanager
def _dask_settings():
    import dask

    from pipeline.dask_cluster import cluster_settings

    with contextlib.ExitStack() as stack:
        if dask.config.get("dataframe.shuffle.method", None) is None:
            stack.enter_context(dask.config.set({"dataframe.shuffle.method": "tasks"}))
        stack.enter_context(cluster_settings())
        yield


def dask_spread(options: PipelineOptions, groups: list | None) -> int | None:
    """On DaskRunner, the partitions to spread the shard writing over after the small
    collections were gathered into one (``RunnerTraits.partitions``): as many as the
    sources' (the groups made for the cluster, else ``--dask_npartitions``, else
    ``GROUPS_PER_THREAD`` a core of this machine). None on other runners: they need no
    gathering."""
    if not _is_dask(options):
        return None
    if groups:
        return len(groups)
    from apache_beam.runners.dask.dask_runner import DaskOptions

    return options.view_as(DaskOptions).npartitions or _local_groups()


def _local_groups() -> int:
    """The groups for a cluster of a thread per core of this machine (the local cluster Beam
    starts without ``--dask_client_address``)."""
    from dask.system import CPU_COUNT  # the cores this process may use (affinity, cgroup)

    return GROUPS_PER_THREAD * CPU_COUNT


@dataclasses.dataclass(frozen=True)
class DaskGroups:
    """What a DaskRunner run spreads its sources by (``DaskAsk.groups``)."""

    groups: int  # how many groups (one partition each)
    threads: int  # the cluster's worker threads
    here: bool  # every worker sees this process's temporary folder: a folder made there too


class DaskAsk:
    """What a DaskRunner run asks of its cluster, and the warm-up of its workers, begun as the
    run is prepared (:func:`ask_dask`, called by ``pipeline.job.prepare``) so that the driver
    does not wait for them on its own path: in one background thread and one connection,
    first the question (:meth:`groups` waits for its answer), then each worker's load of the
    run's tokenizer.

    On nvidia-h200's 16 cores, in one profiled run, the question, asked when the graph was
    about to be made, held the driver 0.8 s: a worker answers on its event loop, which the
    warm-up's load of the tokenizer holds (~0.4 s of parsing that keeps the GIL: a thread of
    the worker would not free the loop). Here the question comes first, while the driver still
    lists the inputs. In a 3-round A/B against asking on the driver's path the wall time did
    not change (1.05x, within the loan's noise; docs/benchmarks.md, "Session 23"): one
    connection instead of two, no speed claimed."""

    def __init__(self, dask, fixed=None, ask: bool = False, warm: bool = False,
                 tokenizer: str | None = None, trust_remote_code: bool = False):  # fmt: skip
        self._dask, self._fixed, self._ask = dask, fixed, ask
        self._answer: list = []
        self._asked = threading.Event()
        self.thread: threading.Thread | None = None
        if ask or warm:
            # a daemon: a scheduler that accepts and never answers holds only this thread, and
            # the run's exit does not wait for it
            self.thread = threading.Thread(
                target=self._run, args=(ask, warm, tokenizer, trust_remote_code),
                name="longctx-dask-ask", daemon=True,
            )  # fmt: skip
            self.thread.start()

    def _run(self, ask: bool, warm: bool, tokenizer: str | None, trust_remote_code: bool) -> None:
        try:
            with _client(self._dask) as client:
                if ask:
                    try:
                        self._answer.append(_dask_threads(client))
                    except BaseException as err:  # noqa: BLE001 - raised by groups()
                        self._answer.append(_as_error(err))
                    self._asked.set()
                if warm:
                    client.run(
                        _load_tokenizer_here, tokenizer, trust_remote_code, on_error="ignore"
                    )
        except BaseException as err:  # noqa: BLE001 - the question's is raised by groups()
            # (distributed's CancelledError is a BaseException: without an answer groups()
            # would wait out its deadline and blame the scheduler)
            if ask and not self._asked.is_set():  # the connection failed
                self._answer.append(_as_error(err))
                self._asked.set()
            # the warm-up's is only a head start: the tokenize step loads it anyway
            _LOG.debug("the Dask cluster: %r", err)

    def groups(self) -> DaskGroups | None:
        """How many groups to spread the sources over: ``GROUPS_PER_THREAD`` for each of the
        cluster's worker threads (waited for, up to a deadline: a Client's timeout covers the
        connection, not the handshake after it); None where the user chose the partitions
        (``--dask_npartitions``, ``--dask_partition_size``) or the cluster has no worker yet.

        Beam 2.77's DaskRunner puts up to 128 elements in a partition by default, so a corpus
        of fewer than 128 sources was one partition: one worker read and tokenized everything.
        With one group a thread, Dask's scheduler at times gave one worker two groups at the
        start (its ``worker-saturation`` of 1.1 rounds up to two tasks on a one-thread worker)
        and the other none (2 of 6 runs, 2 workers); with more a thread, the groups left wait
        at the scheduler and go to whichever worker is free (see GROUPS_PER_THREAD).

        The threads are counted once a worker is up: a cluster whose workers are still
        starting is counted as it is then (``python -m pipeline.dask_cluster`` prints its
        address once all of its workers are up)."""
        if not self._ask:
            return self._fixed
        if not self._asked.wait(2 * DASK_ASK_S + 5):  # the connection, then a worker
            where = self._dask.address or self._dask.scheduler_file
            raise UsageError(
                f"--runner DaskRunner: the Dask scheduler at {where} accepted a connection but "
                f"did not answer within {2 * DASK_ASK_S + 5} s"
            )
        answer = self._answer[0]
        if isinstance(answer, Exception):
            raise answer
        threads, here = answer
        if not threads:
            _LOG.warning(
                "the Dask cluster has no worker yet: its partitions are left to Beam's default "
                "(up to 128 sources a partition; --dask_npartitions chooses)"
            )
            return None
        groups = GROUPS_PER_THREAD * threads
        _LOG.info(
            "the Dask cluster has %d worker threads: the sources go in %d groups", threads, groups
        )
        return DaskGroups(groups, threads, here)


def _as_error(err: BaseException) -> Exception:
    """``err`` as an Exception for the run's failure path (distributed's CancelledError is a
    BaseException, which that path would not catch)."""
    if isinstance(err, Exception):
        return err
    return RuntimeError(f"the Dask cluster did not answer: {err!r}")


def ask_dask(
    options: PipelineOptions, tokenizer: str | None = None, trust_remote_code: bool = False
) -> DaskAsk | None:
    """On DaskRunner, its :class:`DaskAsk`, begun; None on other runners. The cluster is asked
    only where it is up already (``--dask_client_address`` or ``--dask_scheduler_file``) and
    the partitions are left to the pipeline; Beam's own local cluster (it starts with the run)
    has a thread per core of this machine.

    The workers load ``tokenizer`` ahead where it is the bundled one or local files (no
    download or repository code in a worker before the run asks for it): each worker parsed
    it in the tokenize step's first ``setup``, 0.4-0.6 s after its first read, one worker
    after another on nvidia-h200 (14 s of the 16 workers' CPU, session 19); the parse is
    remembered per process (``transforms.samples.tokenize.load_tokenizer``), so the step finds
    it done. A worker that cannot load it (a path its machine does not have) is left to the
    step, which reports it."""
    if not _is_dask(options):
        return None
    from apache_beam.runners.dask.dask_runner import DaskOptions

    from pipeline.worker_pool import local_tokenizer

    dask = options.view_as(DaskOptions)
    chosen = bool(dask.npartitions or dask.partition_size)
    if not dask.address and not dask.scheduler_file:  # Beam's own cluster, on this machine
        groups = _local_groups()
        return DaskAsk(
            dask, None if chosen else DaskGroups(groups, groups // GROUPS_PER_THREAD, True)
        )
    return DaskAsk(
        dask,
        ask=not chosen,
        warm=local_tokenizer(tokenizer) is not None,
        tokenizer=tokenizer,
        trust_remote_code=trust_remote_code,
    )


def _load_tokenizer_here(tokenizer: str | None, trust_remote_code: bool) -> bool:
    """On a Dask worker (``DaskAsk``): the tokenize step's own load, and its newline
    tables (built at the first encode otherwise)."""
    from transforms.samples.tokenize import load_tokenizer

    load_tokenizer(tokenizer, trust_remote_code).newline_tables()
    return True


DASK_ASK_S = 30  # how long to wait for a Dask cluster's first worker
# DaskRunner: groups of sources a worker thread (DaskAsk.groups). Since the shuffles after the
# tokenize step go over one partition (Repartition), more groups cost only their reading and
# tokenizing tasks, not a shuffle task per pair of partitions. Four against two, 16 workers,
# 300 MB, 5 paired rounds on the device: 0.96x the wall time (24.0 s against 24.9, medians),
# faster in 4 of 5 pairs (docs/benchmarks.md, "Session 18"). Eight (session 19): four groups
# of equal bytes took 12.4-16.0 s of tokenizing a worker, and the workers ended 3.5-8 s apart;
# with eight (and one at a time a worker, pipeline.dask_cluster.cluster_settings) the faster
# workers took more (6-11 each), the ends 3.2-4.3 s apart, 0.97x the wall time (3 pairs, one
# slower; both changes at once, with the head start then on for Dask on both sides).
GROUPS_PER_THREAD = 8


def _dask_threads(client) -> tuple[int, bool]:
    """The worker threads of the cluster of ``client``, once it has a worker (waited for up to
    ``DASK_ASK_S``; 0 if none came), and whether every worker sees this process's temporary
    folder as its own (``sees_this_folder``: a folder made there is theirs too)."""
    import tempfile

    try:
        client.wait_for_workers(1, timeout=DASK_ASK_S)
    except TimeoutError:
        return 0, False
    threads = sum(client.nthreads().values())
    folder = tempfile.gettempdir()
    st = os.stat(folder)
    try:
        seen = client.run(
            sees_this_folder, folder, st.st_dev, st.st_ino, run_folders.boot(), os.getuid()
        )
    except Exception as err:  # noqa: BLE001 - a worker that cannot answer: not shared
        _LOG.debug("the Dask workers could not say where they are: %s", err)
        return threads, False
    return threads, bool(seen) and all(seen.values())


def sees_this_folder(folder: str, dev: int, ino: int, boot: str, uid: int) -> bool:
    """On a Dask worker: whether ``folder`` is the driver's (the same machine since its boot,
    the same device and inode, not another container's ``/tmp``) and this worker may use a
    folder the driver makes in it (``tempfile.mkdtemp``'s are its user's alone)."""
    try:
        st = os.stat(folder)
    except OSError:
        return False
    return (
        (st.st_dev, st.st_ino) == (dev, ino)
        and run_folders.boot() == boot
        and os.getuid() in (uid, 0)
        and os.access(folder, os.R_OK | os.W_OK | os.X_OK)
    )


def _client(dask):
    """A client of the Dask scheduler that ``dask`` (the run's ``DaskOptions``) names, not made
    the process's default (Beam's own client is the run's)."""
    from distributed import Client

    return Client(
        dask.address, scheduler_file=dask.scheduler_file, timeout=dask.timeout or DASK_ASK_S,
        set_as_default=False,
    )  # fmt: skip
