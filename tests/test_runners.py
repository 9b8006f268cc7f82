"""The same pipeline on other runners gives byte-identical output: DirectRunner in
multi_processing mode, the portable runner API (what Flink and Spark speak), and Beam's
DaskRunner on a real dask.distributed cluster of 2 worker processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.plots import PLOTS as PLOT_FILES
from tests.conftest import REPO, STDLIB, run_cli, run_patched, two_workers_on_json

pytestmark = pytest.mark.slow
BOOKS = ("kafka-metamorphosis.txt", "gilman-the-yellow-wallpaper.txt", "shelley-frankenstein.txt")


@pytest.fixture(scope="module")
def copy_dir(tmp_path_factory, books_dir):
    """A copy of one of BOOKS under another name: duplicate removal drops one of the two (on
    Dask through the join, elsewhere through the side input)."""
    folder = tmp_path_factory.mktemp("copies")
    shutil.copy(books_dir / BOOKS[0], folder / "the-same-book.txt")
    return folder


def _inputs(books_dir, qwen3_dir, copy_dir=None):
    args = ["--tokenizer", qwen3_dir, "--seq-len", "16384"]
    if copy_dir:
        args += ["--books", copy_dir]
    for b in BOOKS:
        args += ["--books", books_dir / b]
    return args + ["--repos", STDLIB / "json", "--repos", STDLIB / "email"]


def _outputs_equal(a: Path, b: Path) -> None:
    ma = json.loads((a / "manifest.json").read_text())
    mb = json.loads((b / "manifest.json").read_text())
    assert [s["sha256"] for s in ma["shards"]] == [s["sha256"] for s in mb["shards"]]
    assert ma["counts"] == mb["counts"]
    for name in ("documents.arrow", "rejects.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for shard in ma["shards"]:
        assert (a / shard["path"]).read_bytes() == (b / shard["path"]).read_bytes()


@pytest.fixture(scope="module")
def direct_out(tmp_path_factory, books_dir, qwen3_dir, copy_dir):
    out = tmp_path_factory.mktemp("direct") / "out"
    proc = run_cli(
        "pipeline.run",
        "--runner",
        "DirectRunner",
        "--output",
        out,
        *_inputs(books_dir, qwen3_dir, copy_dir),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_multi_processing_direct_runner_is_byte_identical(
    tmp_path, direct_out, books_dir, qwen3_dir, copy_dir
):
    out = tmp_path / "mp"
    proc = run_cli(
        "pipeline.run",
        "--runner",
        "DirectRunner",
        "--direct_running_mode",
        "multi_processing",
        "--direct_num_workers",
        "2",
        "--output",
        out,
        *_inputs(books_dir, qwen3_dir, copy_dir),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _outputs_equal(out, direct_out)
    # the workers (started by pipeline.worker_pool) log at the run's level: Beam's own worker
    # printed ~12 INFO lines and 2 warnings about nothing the run can change, each
    assert proc.stderr == "", proc.stderr[-3000:]


def test_portable_runner_is_byte_identical(tmp_path, direct_out, books_dir, qwen3_dir, copy_dir):
    out = tmp_path / "portable"
    proc = run_cli(
        "pipeline.run",
        "--runner",
        "PortableRunner",
        "--job_endpoint=embed",
        "--environment_type=LOOPBACK",
        "--output",
        out,
        *_inputs(books_dir, qwen3_dir, copy_dir),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _outputs_equal(out, direct_out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timeline_calls(folder: Path) -> dict[str, int]:
    """The calls of each hooked function, summed over the processes that wrote ``folder``
    (``benchmarks/timeline/sitecustomize.py``)."""
    calls: dict[str, int] = {}
    for f in folder.glob("*.json"):
        for name, (_, n, _, _) in json.loads(f.read_text()).items():
            calls[name] = calls.get(name, 0) + n
    return calls


@pytest.fixture
def dask_cluster(tmp_path):
    """A local cluster of 2 workers; its address. Its processes count the calls of the
    pipeline's steps into ``tmp_path/timeline`` (``benchmarks/timeline/sitecustomize.py``)."""
    pytest.importorskip("distributed", reason="pip install -e '.[test]' brings dask")
    port = _free_port()
    (tmp_path / "timeline").mkdir()
    env = {  # the machine's own dask and malloc settings would change what the tests check
        k: v for k, v in os.environ.items() if not k.upper().startswith(("DASK_", "MALLOC_"))
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.dask_cluster", "--workers", "2", "--port", str(port)],
        cwd=REPO,
        env=dict(
            env,
            PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "benchmarks" / "timeline")]),
            BEAM_TIMELINE_DIR=str(tmp_path / "timeline"),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 120
        line = ""
        while time.time() < deadline and "Dask scheduler at" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "the Dask cluster did not start"
        assert "Dask scheduler at" in line, line
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_dask_runner_on_two_workers_is_byte_identical(
    tmp_path, direct_out, dask_cluster, books_dir, qwen3_dir, copy_dir
):
    out = tmp_path / "dask"
    proc = run_cli(
        "pipeline.run",
        "--runner",
        "DaskRunner",
        f"--dask_client_address={dask_cluster}",
        "--output",
        out,
        *_inputs(books_dir, qwen3_dir, copy_dir),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _outputs_equal(out, direct_out)
    # Each source read once and each document tokenized once. Beam 2.77's DaskRunner computes
    # a side input by running the graph above it again inside a task: with ToList's and
    # duplicate removal's side inputs, every source was read 4 times and tokenized twice.
    calls = _timeline_calls(tmp_path / "timeline")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["rejects_by_reason"].get("duplicate") == 1, manifest["counts"]
    assert calls.get("discover.read_source") == len(BOOKS) + 3, calls
    assert calls.get("TokenizeFn.process") == manifest["counts"]["documents"], calls
    # a cluster of this machine: each of the 6 partitions took the next group as it started
    # (largest first; pipeline.job.source_groups, SourceQueue.of_groups)
    assert calls.get("ClaimGroupFn.process") == len(BOOKS) + 3, calls
    # Both workers read: the sources go to the cluster in 2 x GROUPS_PER_THREAD groups of about equal size
    # (pipeline.runners.DaskAsk.groups). Beam's default put up to 128 sources in one partition:
    # one worker read and tokenized everything.
    readers = [
        f
        for f in (tmp_path / "timeline").glob("*.json")
        if "discover.read_source" in json.loads(f.read_text())
    ]
    assert len(readers) == 2, readers
    # the partitions chosen for the run are not recorded as options the user gave
    assert "npartitions" not in manifest["config"]["beam_options"], manifest["config"]


def test_dask_runner_without_dedup_is_byte_identical(
    tmp_path, dask_cluster, books_dir, qwen3_dir, monkeypatch
):
    """``--no-dedup`` builds another graph (no signatures, no join of the drops; read and
    tokenize one stage): on Dask, gathered and spread again (``Repartition``), its output is
    DirectRunner's, byte for byte. Here with the groups of equal size in fixed partitions, as
    on a cluster of other machines (``LONGCTX_DASK_QUEUE=0``)."""
    monkeypatch.setenv("LONGCTX_DASK_QUEUE", "0")
    outs = {}
    for runner in ("DirectRunner", "DaskRunner"):
        outs[runner] = tmp_path / runner
        extra = [f"--dask_client_address={dask_cluster}"] if runner == "DaskRunner" else []
        proc = run_cli(
            "pipeline.run",
            "--runner",
            runner,
            *extra,
            "--no-dedup",
            "--output",
            outs[runner],
            *_inputs(books_dir, qwen3_dir),
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    _outputs_equal(outs["DaskRunner"], outs["DirectRunner"])
    calls = _timeline_calls(tmp_path / "timeline")
    assert calls.get("discover.read_source") == len(BOOKS) + 2, calls
    assert "ClaimGroupFn.process" not in calls, calls


def test_the_dask_cluster_stops_on_ctrl_c_when_started_in_the_background():
    """``python -m pipeline.dask_cluster ... &`` in a script starts with SIGINT ignored (the
    shell's rule for background jobs), so it stopped only on SIGTERM; a new user's kill -INT
    (or Ctrl-C after fg) did nothing. It installs its own SIGINT handler."""
    pytest.importorskip("distributed", reason="pip install -e '.[test]' brings dask")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.dask_cluster", "--workers", "1", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        line = ""
        while "Dask scheduler at" not in line:
            line = proc.stdout.readline()
            assert line, "the Dask cluster did not start"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_dask_cluster_preloads_the_steps(dask_cluster):
    """``pipeline.dask_cluster``'s workers and scheduler import the pipeline's steps as they
    start (``pipeline/dask_preload.py``), not inside the first run: the scheduler unpickles the
    graph, each worker its first task (on 16 cores the first read came 12.6 s into the run)."""
    from distributed import Client

    def imported():
        return all(m in sys.modules for m in ("apache_beam", "pipeline.steps.tokenize"))

    with Client(dask_cluster, set_as_default=False) as client:
        workers = client.run(imported)
        assert len(workers) == 2 and all(workers.values()), workers
        assert client.run_on_scheduler(imported)


def test_a_dask_scheduler_without_workers_leaves_the_partitions_to_beam(monkeypatch):
    """A scheduler whose workers have not joined yet: the run does not fix its partitions from
    an empty cluster (it gave 2 groups for what became 3 threads), it waits a while, then
    leaves them to Beam's default."""
    pytest.importorskip("distributed", reason="pip install -e '.[test]' brings dask")
    from apache_beam.options.pipeline_options import PipelineOptions
    from distributed import LocalCluster

    from pipeline import runners

    monkeypatch.setattr(runners, "DASK_ASK_S", 2)
    with LocalCluster(
        n_workers=0, processes=False, protocol="tcp", dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        options = PipelineOptions(["--runner", "DaskRunner", f"--dask_client_address={address}"])
        runners.check_runner(options)
        started = time.time()
        assert runners.ask_dask(options).groups() is None
        assert time.time() - started < 30


def test_a_dask_scheduler_that_never_answers_stops_the_run(monkeypatch):
    """A port that accepts a connection and never answers: a Client's timeout covers the
    connection, not the handshake, so asking for the cluster's threads hung until the other
    side closed. It is refused after a deadline, and the process can exit (the asking thread
    is a daemon)."""
    pytest.importorskip("distributed", reason="pip install -e '.[test]' brings dask")
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline import runners
    from pipeline.errors import UsageError

    monkeypatch.setattr(runners, "DASK_ASK_S", 1)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        address = f"127.0.0.1:{server.getsockname()[1]}"
        options = PipelineOptions(["--runner", "DaskRunner", f"--dask_client_address={address}"])
        runners.check_runner(options)
        started = time.time()
        with pytest.raises(UsageError, match="accepted a connection but did not answer"):
            runners.ask_dask(options).groups()
        assert time.time() - started < 20


def test_a_cancelled_question_to_the_cluster_fails_the_run_at_once(monkeypatch):
    """distributed raises asyncio's CancelledError (a BaseException) when a connection is torn
    down mid-call: the background question died with it, and the run waited out its 65-s
    deadline to blame a scheduler "that accepted a connection but did not answer". It fails
    at once now, with an Exception the run's failure path reports."""
    pytest.importorskip("distributed", reason="pip install -e '.[test]' brings dask")
    import asyncio

    from apache_beam.options.pipeline_options import PipelineOptions
    from distributed import LocalCluster

    from pipeline import runners

    def cancelled(client):
        raise asyncio.CancelledError()

    monkeypatch.setattr(runners, "_dask_threads", cancelled)
    with LocalCluster(
        n_workers=0, processes=False, protocol="tcp", dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        options = PipelineOptions(["--runner", "DaskRunner", f"--dask_client_address={address}"])
        started = time.time()
        with pytest.raises(RuntimeError, match="did not answer: CancelledError"):
            runners.ask_dask(options).groups()
        assert time.time() - started < 20


def test_unknown_sizes_count_as_large_when_grouping_sources():
    """Remote files and Hub datasets count 0 bytes in the run's sizes. Placed as empty, such a
    source joined the group of the largest book; it counts as large as the largest known one,
    so it gets a group of its own."""
    from pipeline.discover import BOOK, HF, Source
    from pipeline.job import source_groups

    def src(kind, path):
        return Source(kind, path, f"book/{path.rsplit('/', 1)[-1]}", path)

    sources = [src(HF, "owner/data"), src(BOOK, "/b/a.txt"), src(BOOK, "/b/b.txt"),
               src(BOOK, "/b/c.txt")]  # fmt: skip
    for first in (HF, "gs"):  # a Hub dataset, a remote file
        if first == "gs":
            sources[0] = src(BOOK, "gs://bucket/data.txt")
        groups = source_groups(sources, [0, 100, 90, 80], 2)
        where = {s.path: k for k, g in enumerate(groups) for s in g}
        assert sorted(where) == sorted(s.path for s in sources)
        # counted as empty it went with the largest book (100 + 0 against 90 + 80)
        assert where[sources[0].path] != where["/b/a.txt"], groups


def test_dask_partitions_are_a_few_for_each_of_the_clusters_threads(dask_cluster):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.runners import GROUPS_PER_THREAD, ask_dask, check_runner

    def partitions(*flags):
        options = PipelineOptions(["--runner", "DaskRunner", *flags])
        check_runner(options)
        shape = ask_dask(options).groups()
        return shape.groups if shape else None

    # 2 workers, 1 thread each
    assert partitions(f"--dask_client_address={dask_cluster}") == 2 * GROUPS_PER_THREAD
    # the user's choice stands
    assert partitions(f"--dask_client_address={dask_cluster}", "--dask_npartitions=3") is None
    assert partitions(f"--dask_client_address={dask_cluster}", "--dask_partition_size=5") is None
    assert ask_dask(PipelineOptions(["--runner", "DirectRunner"])) is None


def test_the_read_step_puts_the_processs_imports_out_of_the_collectors_sweeps(
    tmp_path, books_dir, qwen3_dir
):
    """The read step's Python (ast parses, decoding) sets off garbage collections that went
    through every object the process had imported (Beam, dask: 150,000 and more): reading 7
    standard-library packages took 0.61 CPU-s, 0.34 with them frozen (``gc.freeze``). The
    read step's setup freezes them once a process; here the in_memory run's process, which had
    none frozen before."""
    argv = ["--runner", "DirectRunner", "--books", books_dir / BOOKS[1], "--tokenizer",
            qwen3_dir, "--seq-len", "16384", "--output", tmp_path / "out", "--quiet"]  # fmt: skip
    proc = run_patched("import gc\nbefore = gc.get_freeze_count()", argv,
                       "print(status, before, gc.get_freeze_count(), int(gc.isenabled()))")  # fmt: skip
    status, before, after, enabled = map(int, proc.stdout.split()[-4:])
    assert (status, before) == (0, 0), proc.stderr[-3000:]
    assert after > 50_000  # Beam's and the pipeline's objects
    # the collector, off while the driver imported Beam and the pipeline
    # (pipeline.beam_import.no_collections), is on again for the run
    assert enabled == 1


def test_dask_workers_load_the_tokenizer_and_answer_the_runs_question_in_the_background(
    dask_cluster, qwen3_dir
):
    """Issue 20 (DaskRunner at 16 workers): each worker parsed the tokenizer in the tokenize
    step's first setup, after its first read (14 CPU-s of 16 workers on the device). With a
    cluster already up, the driver has every worker load it while the graph is made; not for
    Beam's own local cluster (it starts with the run), a Hub id, or another runner. The
    cluster's shape is asked in the same background thread, begun as the run is prepared
    (asked later, on the driver's path, the question held it 0.8 s in one profiled run on
    the device: session 23); its answer is the cluster's."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from distributed import Client

    from pipeline.runners import GROUPS_PER_THREAD, ask_dask

    def loaded(spec):  # on a worker: the tokenize step's load would find it done
        from transforms.samples import tokenize

        return tokenize._files_key(spec) in tokenize._BY_FILES

    spec = str(qwen3_dir)
    options = PipelineOptions(["--runner", "DaskRunner", f"--dask_client_address={dask_cluster}"])
    with Client(dask_cluster, set_as_default=False) as client:
        assert list(client.run(loaded, spec).values()) == [False, False]
        ask = ask_dask(options, spec)
        shape = ask.groups()
        assert (shape.threads, shape.groups, shape.here) == (2, 2 * GROUPS_PER_THREAD, True)
        ask.thread.join(120)
        assert not ask.thread.is_alive()
        assert list(client.run(loaded, spec).values()) == [True, True]
    own = ask_dask(PipelineOptions(["--runner", "DaskRunner"]), spec)  # Beam's own cluster
    assert own.thread is None and own.groups().here
    hub = ask_dask(options, "Qwen/Qwen3-8B")  # a Hub id: the question only, no load ahead
    assert hub.groups().threads == 2
    hub.thread.join(60)
    assert not hub.thread.is_alive()
    assert ask_dask(PipelineOptions(["--runner", "DirectRunner"]), spec) is None


def test_dask_clusters_schedule_one_group_at_a_time_on_workers_with_glibcs_malloc(
    dask_cluster, monkeypatch, tmp_path
):
    """Issue 20 (DaskRunner at 16 workers), distributed's settings:

    - its default worker-saturation, 1.1, rounds up to two tasks on a one-thread worker, so
      each worker held its next group of sources while it worked on one, and at the end a slow
      worker still held a group an idle one could have run;
    - its nannies start each worker with ``MALLOC_TRIM_THRESHOLD_=65536``, which turns off
      glibc's sliding mmap threshold: every document's text and token buffer was mapped and
      faulted in afresh (17x the page faults, 1.16x the time to tokenize);
    - its workers' profiler, event-loop tick (20 ms) and system monitor (0.5 s) take the GIL
      from the task thread between its tokenizer calls.

    The cluster of ``pipeline.dask_cluster`` and Beam's own local one (started inside
    ``translation_settings``) schedule at 1.0 and start quieter workers without the variable,
    also a worker started again (a review found that one back at distributed's defaults); a
    setting in the environment, a dask YAML file or dask's config stands."""
    import os

    import dask
    from apache_beam.options.pipeline_options import PipelineOptions
    from distributed import Client
    from distributed.nanny import _get_env_variables

    from pipeline.dask_cluster import (
        PROFILE,
        SATURATION_ENV,
        TICK,
        TRIM_ENV,
        cluster_settings,
        env_name,
    )
    from pipeline.runners import translation_settings

    def quiet(dask_worker):
        from collections import deque

        return (
            os.environ.get("MALLOC_TRIM_THRESHOLD_", "unset"),
            "profile" in dask_worker.periodic_callbacks,
            isinstance(dask_worker.io_loop.profile, deque),  # no sampling thread (not 3.11)
            dask_worker._tick_interval,
            dask_worker.periodic_callbacks["monitor"].callback_time,
        )

    key = "distributed.scheduler.worker-saturation"
    pre_spawn = "distributed.nanny.pre-spawn-environ"
    with Client(dask_cluster, set_as_default=False) as client:
        assert (
            client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.WORKER_SATURATION) == 1.0
        )
        expected = [("unset", False, True, 1.0, 2000.0)] * 2
        assert sorted(client.run(quiet).values()) == expected
        client.restart()  # the nannies start their workers again
        assert sorted(client.run(quiet).values()) == expected
    monkeypatch.delenv(TRIM_ENV, raising=False)
    default = dask.config.get(key)
    assert default != 1.0
    assert TRIM_ENV in _get_env_variables(pre_spawn)  # what a nanny sets, as distributed ships
    with translation_settings(PipelineOptions(["--runner", "DaskRunner"])):
        assert dask.config.get(key) == 1.0
        assert TRIM_ENV not in _get_env_variables(pre_spawn)
    # only while the pipeline runs
    assert dask.config.get(key) == default
    assert TRIM_ENV in _get_env_variables(pre_spawn)
    with translation_settings(PipelineOptions(["--runner", "DirectRunner"])):
        assert dask.config.get(key) == default
        assert TRIM_ENV in _get_env_variables(pre_spawn)
    # the user's choice in the environment
    monkeypatch.setenv(SATURATION_ENV, "inf")
    monkeypatch.setenv(TRIM_ENV, "131072")
    monkeypatch.setenv(env_name(PROFILE), "True")  # as distributed ships it, but said
    with cluster_settings():
        assert dask.config.get(key) == default
        assert _get_env_variables(pre_spawn)[TRIM_ENV] == "131072"
        assert dask.config.get(PROFILE) is True
        assert dask.config.get(TICK) == "1s"  # not chosen: the pipeline's
    monkeypatch.delenv(SATURATION_ENV)
    monkeypatch.delenv(TRIM_ENV)
    monkeypatch.delenv(env_name(PROFILE))
    # the user's choice in code
    with dask.config.set({key: 2.0, f"{pre_spawn}.{TRIM_ENV}": 4096}), cluster_settings():
        assert dask.config.get(key) == 2.0
        assert _get_env_variables(pre_spawn)[TRIM_ENV] == "4096"
    # in a YAML file, even as distributed's own default (there to keep the profile page)
    (tmp_path / "dask.yaml").write_text(
        "distributed:\n  worker:\n    profile:\n      enabled: true\n"
    )
    monkeypatch.setattr(dask.config, "paths", [str(tmp_path)])
    with cluster_settings():
        assert dask.config.get(PROFILE) is True
        assert dask.config.get(TICK) == "1s"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--runner", "NoSuchRunner"], "--runner NoSuchRunner: unknown runner"),
        (["--runner", "DaskRunner", "--dask_client_address=127.0.0.1:9"], "pipeline.dask_cluster"),
        (["--runner", "PortableRunner", "--job_endpoint=localhost:9"], "no job server"),
    ],
)
def test_unusable_runner_fails_fast_with_exit_2(tmp_path, args, needle):
    proc = run_cli("pipeline.run", *args, "--output", tmp_path / "out", timeout=60)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_multi_processing_workers_share_the_cores_between_their_tokenizers():
    """Issue 20: N multi_processing workers each got a tokenizer pool of one thread per core
    (N x cores threads); each worker now sees RAYON_NUM_THREADS = cores // N. A value the user
    set wins, and in_memory runs are left alone."""
    import os

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that, equal_to

    from pipeline.runners import make_runner, share_cores

    argv = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
    options = PipelineOptions(["--runner", "DirectRunner", *argv])
    want = str(max(1, (os.cpu_count() or 1) // 2))
    saved = os.environ.pop("RAYON_NUM_THREADS", None)
    try:
        assert share_cores(options) == int(want)
        with beam.Pipeline(runner=make_runner(options), options=options) as p:
            # a lambda travels by value (the workers cannot import this test module)
            threads = beam.Map(lambda _: __import__("os").environ.get("RAYON_NUM_THREADS"))
            seen = p | beam.Create(range(8)) | threads | beam.Distinct()
            assert_that(seen, equal_to([want]))
        assert share_cores(PipelineOptions(["--runner", "DirectRunner"]), environ={}) is None
        user = {"RAYON_NUM_THREADS": "3"}
        assert share_cores(options, environ=user) is None and user["RAYON_NUM_THREADS"] == "3"
    finally:
        os.environ.pop("RAYON_NUM_THREADS", None)
        if saved is not None:
            os.environ["RAYON_NUM_THREADS"] = saved


def test_multi_processing_workers_are_stopped_together(monkeypatch):
    """Issue 20: at the end of a run Beam 2.77's FnApiRunner stopped its worker processes one
    after another (close one's connection, wait for its process to exit, then the next): ~0.2 s
    each, 3 s or more of a 16-worker run after its last shard was written. Through
    ``make_runner`` every worker is told to stop before any is waited for: here each close of
    the 3 workers starts before the first one ends."""
    import threading
    import time

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import worker_handlers
    from apache_beam.testing.util import assert_that, equal_to

    from pipeline.runners import make_runner

    closes, lock = [], threading.Lock()
    beam_close = worker_handlers.GrpcWorkerHandler.close

    def timed_close(self):
        start = time.monotonic()
        beam_close(self)
        with lock:
            closes.append((start, time.monotonic()))

    monkeypatch.setattr(worker_handlers.GrpcWorkerHandler, "close", timed_close)
    argv = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "3"]
    options = PipelineOptions(["--runner", "DirectRunner", *argv])
    with beam.Pipeline(runner=make_runner(options), options=options) as p:
        doubled = p | beam.Create(range(30)) | beam.Reshuffle() | beam.Map(lambda x: 2 * x)
        assert_that(doubled, equal_to([2 * x for x in range(30)]))
    assert len(closes) == 3
    assert max(start for start, _ in closes) < min(end for _, end in closes), closes


def _run_facts(argv, pool, folder) -> list[tuple[int, int, str, int, int]]:
    """Run a small multi_processing pipeline through ``make_runner(options, pool)``; returns,
    for each worker process that ran an element, (pid, tokenizers it had loaded when its first
    element came, the control address it was given, its parent's pid, how many of those
    tokenizers had their newline tables built), as the workers wrote them to ``folder``."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.runners import make_runner

    options = PipelineOptions(["--runner", "DirectRunner", *argv])

    def note(x, folder=str(folder)):  # travels by value: workers cannot import this module
        import json
        import os
        import sys

        path = os.path.join(folder, f"{os.getpid()}.json")
        if not os.path.exists(path):
            tok = sys.modules.get("transforms.samples.tokenize")
            control = os.environ.get("CONTROL_API_SERVICE_DESCRIPTOR", "")
            with open(path, "w") as f:
                loaded = list(tok._LOADED.values()) if tok else []
                tables = sum(t._newline is not None for t in loaded)
                json.dump([os.getpid(), len(loaded), control, os.getppid(), tables], f)
        return x

    with beam.Pipeline(runner=make_runner(options, pool), options=options) as p:
        _ = p | beam.Create(range(64)) | beam.Reshuffle() | beam.Map(note)
    return [tuple(json.loads(f.read_text())) for f in sorted(Path(folder).glob("*.json"))]


def test_multi_processing_workers_are_forked_from_the_process_started_before_beam(
    qwen3_dir, tmp_path
):
    """Issue 20: the runner started its N workers ~3.5 s into a 16-worker run, and each spent
    3-5 s importing Beam and parsing the tokenizer before its first file. Now they are forked
    from the pool's server, started before the driver imports Beam: the elements run in those
    forks, with the tokenizer already loaded and Beam's own control address; their exits
    reach the runner."""
    from pipeline.worker_pool import WorkerPool

    argv = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
    with WorkerPool(2, str(qwen3_dir)) as pool:
        facts = _run_facts(argv, pool, tmp_path)
        assert {pid for pid, *_ in facts} == set(pool.handed) and len(pool.handed) == 2
        assert all(parent == pool.server.pid for *_, parent, _ in facts), facts
        # the tokenizer loaded, its newline tables built: by the server, once, before the fork
        assert all(loaded == 1 for _, loaded, *_ in facts), facts
        assert all(tables == 1 for *_, tables in facts), facts
        assert all("localhost:" in control for _, _, control, *_ in facts), facts
        assert [w.returncode for w in pool._workers.values()] == [0, 0]
        server = pool.server
    assert server.poll() == 0  # the server left with its workers


def test_the_pool_server_ends_without_tearing_down_its_interpreter(
    qwen3_dir, tmp_path, monkeypatch
):
    """The pool's server holds Beam and the tokenizer; once its workers have exited the
    driver's close() waited for its interpreter's teardown (~0.16 s on 2 cores, after the
    run's summary). It ends with ``exit_now``: a module-level object's ``__del__`` (run by a
    teardown only) leaves no mark, and the server's status is still 0."""
    from pipeline.worker_pool import WorkerPool

    site = tmp_path / "site"
    site.mkdir()
    mark = tmp_path / "torn-down"
    (site / "sitecustomize.py").write_text(
        "class _Mark:\n"
        f"    def __del__(self, _open=open, _path={str(mark)!r}):\n"
        "        _open(_path, 'w').close()\n"
        "_mark = _Mark()\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    argv = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
    (tmp_path / "facts").mkdir()
    with WorkerPool(2, str(qwen3_dir)) as pool:
        facts = _run_facts(argv, pool, tmp_path / "facts")
        assert len(facts) == 2
        server = pool.server
    assert server.poll() == 0 and not mark.exists()


def test_without_the_pool_server_beam_starts_its_own_workers(qwen3_dir, tmp_path):
    """A pool whose server is gone (killed, or never started) hands out nothing: Beam starts
    its own workers, and the run completes."""
    from pipeline.worker_pool import WorkerPool

    argv = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
    with WorkerPool(2, str(qwen3_dir)) as pool:
        pool.server.kill()
        pool.server.wait()
        facts = _run_facts(argv, pool, tmp_path)
        assert len({pid for pid, *_ in facts}) == 2 and pool.handed == []


_SERVER_KILLED_MID_RUN = """
import ctypes, json, os, signal, sys
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from pipeline.runners import make_runner
from pipeline.worker_pool import WorkerPool

folder, reaper = sys.argv[1], sys.argv[2] == "1"
if reaper:  # orphans become this process's children, as when the driver is PID 1
    assert ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # CHILD_SUBREAPER

def kill_server(x, folder=folder):
    try:
        os.close(os.open(os.path.join(folder, "killed"), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return x
    os.kill(os.getppid(), signal.SIGKILL)  # this worker's parent: the pool's server
    return x

argv = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
options = PipelineOptions(["--runner", "DirectRunner", *argv])
with WorkerPool(2) as pool:
    with beam.Pipeline(runner=make_runner(options, pool), options=options) as p:
        _ = p | beam.Create(range(64)) | beam.Reshuffle() | beam.Map(kill_server)
    codes = [w.returncode for w in pool._workers.values()]
    print(json.dumps({"handed": len(pool.handed), "codes": codes}))
"""


@pytest.mark.parametrize("reaper", [False, True], ids=["orphans-to-init", "driver-reaps"])
def test_a_pool_server_killed_mid_run_leaves_no_false_failure_and_no_hang(tmp_path, reaper):
    """The review of session 11: with the server killed mid-run (the OOM killer, a pkill) its
    workers' exits were no longer reported. ``ForkedWorker.wait`` then took a worker reaped by
    init for a failure (return code -1: Beam printed a RuntimeError traceback per worker
    under --quiet), and where the orphans became the driver's own children (the driver as
    PID 1 in a container, or a subreaper) it waited for those zombies forever."""
    proc = subprocess.run(
        [sys.executable, "-c", _SERVER_KILLED_MID_RUN, str(tmp_path), "1" if reaper else "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,  # a hang fails here
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "killed").exists()
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["handed"] >= 1 and result["codes"] == [0] * len(result["codes"]), result
    assert "Worker subprocess exited" not in proc.stderr, proc.stderr[-3000:]


def test_the_pool_server_stops_with_the_run_or_its_driver(qwen3_dir):
    """The server exits when its driver is gone (its stdin closed), and a run that ends
    before any worker was forked (a refused run) stops it at once rather than waiting for its
    imports: nothing is left running."""
    from pipeline.worker_pool import WorkerPool

    pool = WorkerPool(2, str(qwen3_dir))
    pool.server.stdin.close()  # as when the driver dies: the pipe's far end closes
    assert pool.server.wait(timeout=120) == 0
    pool.close()
    assert pool.take({}) is None
    other = WorkerPool(1, str(qwen3_dir))
    server = other.server
    other.close()
    assert server.returncode == -signal.SIGKILL  # stopped, not waited for


def test_the_pool_server_ends_while_the_run_is_finalized(qwen3_dir, tmp_path):
    """The pool's server and its workers wind down once the pipeline is done, beside the
    manifest, report and publish, not after them: the run's end waited ~0.4 s for them on
    2 workers (more with 16)."""
    watch = (
        "import time\n"
        "import pipeline.job as job\n"
        "finalize, seen = job.finalize, []\n"
        "def watched(j, *a):\n"
        "    deadline = time.monotonic() + 30\n"
        "    while j.workers.server.poll() is None and time.monotonic() < deadline:\n"
        "        time.sleep(0.05)\n"
        "    seen.append(j.workers.server.poll())\n"
        "    return finalize(j, *a)\n"
        "job.finalize = watched\n"
    )
    argv = two_workers_on_json(qwen3_dir, tmp_path / "out")
    proc = run_patched(watch, argv, "print(status, seen)", timeout=300)
    assert proc.stdout.split()[-2:] == ["0", "[0]"], proc.stdout + proc.stderr[-3000:]


# The report's renderer watched: after the run, ``seen`` holds whether its plots came from the
# plan step's data (PlotRenderer.early)
_EARLY_PLOTS_SEEN = (
    "import pipeline.plots as plots\n"
    "seen, render = [], plots.PlotRenderer.render\n"
    "def watched(self, *a):\n"
    "    r = render(self, *a)\n"
    "    seen.append(self.early)\n"
    "    return r\n"
    "plots.PlotRenderer.render = watched\n"
)


def _in_memory(argv: list[str]) -> list[str]:
    """``two_workers_on_json``'s flags without its runner mode: DirectRunner's in_memory."""
    mode = ("--direct_running_mode", "multi_processing", "--direct_num_workers", "2")
    return [a for a in argv if a not in mode]


@pytest.mark.parametrize("mode", ["in_memory", "multi_processing"])
def test_the_reports_plots_are_drawn_from_the_plan_steps_data_while_the_shards_are_written(
    tmp_path, qwen3_dir, mode
):
    """The plan step writes the plots' data to the staging folder and the driver hands it to
    the plot helper at once: the report's plots come from there (not from the run's end),
    are the bytes drawn from documents.arrow and the shards' sample lengths, and the data
    file is not published."""
    import numpy as np
    import pyarrow as pa

    from pipeline.plots import plots

    out = tmp_path / "out"
    argv = two_workers_on_json(qwen3_dir, out)
    if mode == "in_memory":
        argv = _in_memory(argv)
    watch = _EARLY_PLOTS_SEEN
    proc = run_patched(watch, argv, "print(status, seen)", timeout=300)
    assert proc.stdout.split()[-2:] == ["0", "[True]"], proc.stdout + proc.stderr[-3000:]
    docs = pa.ipc.open_stream(out / "documents.arrow").read_all()
    manifest = json.loads((out / "manifest.json").read_text())
    sample_tokens = np.array(
        [n for s in manifest["shards"]
         for n in pa.ipc.open_stream(out / s["path"]).read_all().column("n_tokens").to_pylist()]
    )  # fmt: skip
    for name, png in plots(docs, sample_tokens, 4096).items():
        assert (out / "report" / name).read_bytes() == png, name
    assert not list(out.rglob("plots.arrow*"))


def test_a_failure_to_write_the_plots_data_ahead_costs_the_run_nothing(tmp_path, qwen3_dir):
    """The plots' data written by the plan step is a head start for the report only: where it
    cannot be written the run still succeeds, and its plots are drawn at the end."""
    out = tmp_path / "out"
    argv = _in_memory(two_workers_on_json(qwen3_dir, out))
    watch = _EARLY_PLOTS_SEEN + (
        "def broken(*a, **k):\n"
        "    raise OSError(28, 'No space left on device')\n"
        "plots.plot_data = broken\n"
    )
    proc = run_patched(watch, argv, "print(status, seen)", timeout=300)
    assert proc.stdout.split()[-2:] == ["0", "[False]"], proc.stdout + proc.stderr[-3000:]
    assert sorted(p.name for p in (out / "report").glob("*.png")) == sorted(PLOT_FILES)
    assert not list(out.rglob("plots.arrow*"))


_HEAD_START_RUN = """
import json, os, sys, time
os.cpu_count = lambda: 16  # the head start runs on 8 cores or more
import pipeline.head_start as head_start
import pipeline.job as job
reports, execute = [], job.execute
def after_the_head_start(j, *a):  # the run's workers begin once 2 sources are tokenized ahead
    done, deadline = os.path.join(j.head_start.folder, head_start.DONE), time.monotonic() + 120
    while len(os.listdir(done) if os.path.isdir(done) else []) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return execute(j, *a)
job.execute = after_the_head_start
close = head_start.HeadStart.close
def closed(self):
    close(self)
    reports.append(dict(self.report, folder=self.folder))
head_start.HeadStart.close = closed
"""


@pytest.mark.parametrize("dedup", [True, False], ids=["dedup", "no-dedup"])
def test_the_head_start_tokenizes_ahead_and_the_output_is_byte_identical(
    tmp_path, books_dir, qwen3_dir, dedup
):
    """Issue 20: on a machine of 8 cores or more, the cores idle while the driver and the
    workers import Beam tokenize the largest sources ahead (``pipeline/head_start.py``); the
    run's steps take those entries instead of tokenizing again, and the output is the bytes of
    an in_memory run (with duplicate removal, where the read and tokenize steps are two
    stages, and without, where they are one)."""
    out = tmp_path / "out"
    inputs = [*map(str, _inputs(books_dir, qwen3_dir)), *([] if dedup else ["--no-dedup"])]
    direct_out = tmp_path / "in_memory"  # the corpus without direct_out's duplicate copy
    ref = run_cli("pipeline.run", "--runner", "DirectRunner", "--output", direct_out, *inputs)
    assert ref.returncode == 0, ref.stderr[-3000:]
    argv = ["--runner", "DirectRunner", "--direct_running_mode", "multi_processing",
            "--direct_num_workers", "2", "--output", str(out), "--quiet", *inputs]  # fmt: skip
    # 2 workers on 16 cores: 2 helpers, each had finished a source when the workers began
    _run_with_head_start(argv, direct_out, out)


def _run_with_head_start(argv: list[str], ref_out: Path, out: Path) -> None:
    """A run of ``argv`` (its output ``out``) as 16 cores would make it, started once the
    head start has finished 2 sources (``_HEAD_START_RUN``): it succeeded, its output is
    ``ref_out``'s bytes, the head start tokenized at least those 2 sources, every source read
    ahead and every entry made ahead was used by the run, and its folder went with the run."""
    report = 'print(json.dumps({"status": status, "reports": reports}))'
    proc = run_patched(_HEAD_START_RUN, argv, report)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["status"] == 0
    [report] = result["reports"]
    assert report["sources"] >= 2 and report["tokens"] > 100_000, report
    assert report["untaken"] == 0 and report["unread"] == 0, report
    _outputs_equal(ref_out, out)
    assert not os.path.exists(report["folder"])  # removed with the run


@pytest.mark.parametrize("dedup", [True, False], ids=["dedup", "no-dedup"])
def test_a_dask_clusters_idle_workers_tokenize_ahead_and_the_output_is_byte_identical(
    tmp_path, books_dir, qwen3_dir, dask_cluster, copy_dir, dedup, request
):
    """Issue 20, DaskRunner: with a cluster up on this machine its workers idle while the
    driver imports Beam and builds the graph; the head start hands them the largest sources
    (a Dask task each, ``pipeline.head_start._feed_dask``), and the run's steps on the same
    workers take what they did. Every source is read once in the cluster's processes (the
    helper process reads nothing: it has no tokenizer, test_a_dask_head_start_answers_...),
    a book and its copy under another name included (dropped by duplicate removal, or kept),
    and the output is the bytes of an in_memory run."""
    out = tmp_path / "out"
    inputs = [
        *map(str, _inputs(books_dir, qwen3_dir, copy_dir)),
        *([] if dedup else ["--no-dedup"]),
    ]
    if dedup:  # direct_out's run: the same inputs
        ref_out = request.getfixturevalue("direct_out")
    else:
        ref_out = tmp_path / "in_memory"
        ref = run_cli("pipeline.run", "--runner", "DirectRunner", "--output", ref_out, *inputs)
        assert ref.returncode == 0, ref.stderr[-3000:]
    argv = ["--runner", "DaskRunner", f"--dask_client_address={dask_cluster}",
            "--output", str(out), "--quiet", *inputs]  # fmt: skip
    _run_with_head_start(argv, ref_out, out)
    calls = _timeline_calls(tmp_path / "timeline")  # the cluster's processes only
    assert calls.get("discover.read_source") == len(BOOKS) + 3, calls
    assert calls.get("ReadSourceFn.process") == len(BOOKS) + 3, calls
    assert calls.get("head_start.work_on", 0) >= 2, calls  # in the workers, not the helper


_HEAD_START_DRIVER = """
import os, sys, time
from pipeline.config import BuildConfig
from pipeline.head_start import DONE, HeadStart
config = BuildConfig(books=(sys.argv[1],), tokenizer=sys.argv[2], output=sys.argv[3])
hs = HeadStart(config, 1)
done, deadline = os.path.join(hs.folder, DONE), time.monotonic() + 120
while not (os.path.isdir(done) and os.listdir(done)) and time.monotonic() < deadline:
    time.sleep(0.05)
print(hs.folder, hs._proc.pid, flush=True)
time.sleep(600)  # killed by the test: a driver that never closes its head start
"""


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_a_finished_head_start_keeps_no_tokenizer_and_cleans_up_after_a_killed_driver(
    tmp_path, books_dir, qwen3_dir
):
    """Once its helpers are done the head start only waits for the run's end, to remove its
    folder should the driver die without doing it: it does that in a fresh interpreter (the
    tokenizer it loaded, ~250 MB, is not held through the run beside the workers), and still
    removes the folder when the driver is SIGKILLed."""
    book = books_dir / "melville-moby-dick.txt"
    driver = subprocess.Popen(
        [sys.executable, "-c", _HEAD_START_DRIVER, str(book), str(qwen3_dir), str(tmp_path / "o")],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        folder, pid = driver.stdout.readline().split()
        deadline = time.monotonic() + 30
        while "-S" not in Path(f"/proc/{pid}/cmdline").read_text().split("\0"):
            assert time.monotonic() < deadline, "the head start never became its watcher"
            time.sleep(0.05)
        assert _rss_mb(int(pid)) < 64
        assert os.path.isdir(folder)
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 10
    while os.path.exists(folder) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(folder)


def test_a_source_a_helper_holds_is_waited_for_until_the_helper_ends_or_dies(tmp_path):
    """The run's read step waits for a source a head-start helper is tokenizing (its entries
    come next), and no longer than the helper lives: a helper that dies lets the run read and
    tokenize the source itself."""
    from pipeline import head_start

    (tmp_path / head_start.HELD).mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pipeline.head_start import _take\n"
         "fd = _take(sys.argv[1], 'book/a'); print('held', flush=True); time.sleep(600)",
         str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    head_start.wait_for(str(tmp_path), "book/b")  # not taken: no wait
    assert holder.poll() is None
    # and the run has it now: a helper that comes after does not start on it (it would read
    # and tokenize it a second time)
    assert head_start._take(str(tmp_path), "book/b") is None
    threading_timer = __import__("threading").Timer(1.0, holder.kill)
    threading_timer.start()
    head_start.wait_for(str(tmp_path), "book/a")  # returns when the holder is gone
    assert holder.wait(timeout=5) == -signal.SIGKILL
    assert head_start._take(str(tmp_path), "book/a") is None  # taken once, by the helper


def test_head_start_helpers_take_nothing_once_told_to_stop(tmp_path, qwen3):
    from pipeline import head_start
    from pipeline.config import BuildConfig
    from pipeline.discover import discover, read_source

    sources, _ = discover(repos=[str(STDLIB / "json")])
    head_start.make_folders(str(tmp_path))
    head_start.stop(str(tmp_path))
    head_start._work(str(tmp_path), sources, BuildConfig(), qwen3)
    assert os.listdir(tmp_path / head_start.HELD) == []
    (tmp_path / head_start.STOP).unlink()
    head_start._work(str(tmp_path), sources, BuildConfig(), qwen3)
    assert len(os.listdir(tmp_path / head_start.DONE)) == len(sources) == 1
    [src] = sources
    [kept] = (tmp_path / head_start.READ).iterdir()
    data = kept.read_bytes()
    # read as another source (the helper listed the inputs itself): not taken
    assert head_start.read_items(str(tmp_path), replace(src, path=src.path + "x")) is None
    kept.write_bytes(data)
    taken = head_start.read_items(str(tmp_path), src)
    assert taken == read_source(src, BuildConfig().read_settings) and not kept.exists()


def test_the_head_start_tokenizes_a_text_that_two_sources_hold_once(tmp_path, books_dir, qwen3):
    """Copies of one book under two names (a corpus replicated, or duplicates that duplicate
    removal drops later) are one text: the head start tokenizes it once and reads both. The
    copies came first in the largest-first order and were all tokenized by parallel helpers,
    each entry replacing the last: 12 books of work for 2 entries on nvidia-h200."""
    from pipeline import head_start
    from pipeline.config import BuildConfig
    from pipeline.discover import discover

    books = tmp_path / "books"
    books.mkdir()
    for name in ("a.txt", "b.txt"):
        shutil.copy(books_dir / BOOKS[0], books / name)
    sources, _ = discover(books=[str(books)])
    folder = tmp_path / "ahead"
    head_start.make_folders(str(folder))
    head_start._work(str(folder), sources, BuildConfig(), qwen3)
    done = sorted((folder / head_start.DONE / f).read_text() for f in os.listdir(folder / "done"))
    assert len(done) == 2 and done[0].startswith("0 0"), done  # both read, one tokenized
    assert int(done[1].split()[0]) == 1 and int(done[1].split()[1]) > 10_000, done
    assert len(list((folder / head_start.ENTRIES).glob("*.npz"))) == 1
    assert all(head_start.read_items(str(folder), s) for s in sources)


def test_the_head_start_takes_only_local_books_and_repositories_within_its_caps(
    tmp_path, books_dir, monkeypatch, qwen3_dir
):
    """What one single-threaded helper would hold the run back on (a source over the cap),
    records files (short documents: nothing ahead), and more than the budget are left to the
    run; a Hub tokenizer (network, repository code) gets no head start at all."""
    from pipeline import head_start
    from pipeline.config import BuildConfig

    records = tmp_path / "rows.jsonl"
    records.write_text('{"text": "a short record"}\n')
    big, small = books_dir / "melville-moby-dick.txt", books_dir / "kafka-metamorphosis.txt"
    config = BuildConfig(
        books=[str(big), str(small)], documents=[str(records)], output=str(tmp_path / "o")
    )
    names = lambda: [Path(s.path).name for s in head_start._sources(config, str(tmp_path))]  # noqa: E731
    assert names() == [big.name, small.name]  # largest first, the records file left out
    monkeypatch.setattr(head_start, "SOURCE_CAP", big.stat().st_size - 1)
    assert names() == [small.name]
    monkeypatch.setattr(head_start, "SOURCE_CAP", 1 << 30)
    monkeypatch.setattr(head_start, "BUDGET", small.stat().st_size)
    assert names() == [small.name]  # the big one does not fit; the next does
    hub = BuildConfig(tokenizer="Qwen/Qwen3-8B", output=str(tmp_path / "o"))
    assert head_start.HeadStart.for_run(hub, 16, cores=16) is None
    with head_start.HeadStart.for_run(
        BuildConfig(tokenizer=str(qwen3_dir), output=str(tmp_path / "o")), 16, cores=16
    ) as local:
        assert local.processes == 12


@pytest.mark.parametrize(
    "workers, cores, want", [(16, 16, 12), (2, 16, 2), (16, 8, 4), (16, 4, 0), (1, 16, 1)]
)
def test_the_head_start_uses_the_cores_the_run_leaves_idle(workers, cores, want):
    """As many helpers as the run has workers, on the cores the driver and the worker pool's
    server (importing Beam meanwhile) leave; none below 8 cores."""
    from pipeline.head_start import processes_for

    assert processes_for(workers, cores) == want


@pytest.mark.parametrize(
    "argv, want",
    [
        ([], 0),
        (["--direct_running_mode", "multi_processing"], 1),
        (["--direct_running_mode=multi_processing", "--direct_num_workers=3"], 3),
        (
            ["--direct_running_mode", "multi_processing", "--direct_num_workers", "0"],
            os.cpu_count(),
        ),
        (["--direct_running_mode", "multi_threading", "--direct_num_workers", "4"], 0),
        (["--runner", "PortableRunner", "--direct_running_mode", "multi_processing"], 0),
        (["--direct_running_mode", "multi_processing", "--direct_num_workers", "x"], 0),
        (["--direct_running_mod", "multi_processing"], 0),  # Beam takes no abbreviations
    ],
)
def test_the_pool_is_sized_as_beam_reads_the_flags(argv, want):
    from pipeline.worker_pool import planned_workers

    assert planned_workers(argv) == want


@pytest.mark.parametrize(
    "argv, want",
    [
        (["--runner", "DaskRunner", "--dask_client_address=127.0.0.1:8786"], "127.0.0.1:8786"),
        (
            ["--runner=DaskRunner", "--dask_client_address", "tcp://localhost:1"],
            "tcp://localhost:1",
        ),
        (["--runner", "DaskRunner"], None),  # Beam's own cluster starts with the run
        (["--runner", "DaskRunner", "--dask_client_address=192.0.2.7:8786"], None),  # elsewhere
        (["--runner", "DaskRunner", "--dask_client_address=scheduler.example:8786"], None),
        (["--dask_client_address=127.0.0.1:8786"], None),  # DirectRunner
        (["--runner", "DaskRunner", "--dask_client_addr=127.0.0.1:8786"], None),  # no abbreviation
    ],
)
def test_the_head_start_goes_to_a_dask_cluster_only_at_an_address_of_this_machine(argv, want):
    from pipeline.head_start import dask_address

    assert dask_address(argv) == want


def test_a_dask_head_start_answers_no_tokenizer_check_and_gives_up_on_no_scheduler(
    tmp_path, qwen3_dir
):
    """On Dask the helper loads no tokenizer: the driver's own check runs (``answers``). A
    scheduler that is not there (the connection refused): the helper gives up at once, not
    after its Client's 10-s timeout, becomes the watcher (it does not hang or die), and
    closing leaves nothing behind."""
    from pipeline.config import BuildConfig
    from pipeline.head_start import DASK_CONNECT_S, HeadStart

    config = BuildConfig(books=[str(REPO / "README.md")], tokenizer=str(qwen3_dir))
    config = replace(config, output=str(tmp_path / "out"))
    assert HeadStart.for_run(config, 0, cores=4, dask="127.0.0.1:1") is None  # below 8 cores
    with HeadStart.for_run(config, 0, cores=16, dask=f"127.0.0.1:{_free_port()}") as ahead:
        assert not ahead.answers and ahead.tokenizer_answer(timeout=1) == {}
        cmdline = Path(f"/proc/{ahead._proc.pid}/cmdline")
        deadline = time.monotonic() + 60
        while "-S" not in cmdline.read_text().split("\0"):
            assert time.monotonic() < deadline, "the helper never gave up on the scheduler"
            time.sleep(0.1)
        # its imports and the listing take seconds on a busy machine; the Client's timeout
        # would add 10 more
        assert time.monotonic() < deadline - 60 + DASK_CONNECT_S, "waited out the timeout"
        assert os.path.isdir(Path(ahead.folder) / "held")  # it had listed the sources
    assert ahead.report["sources"] == 0 and not os.path.exists(ahead.folder)


@pytest.mark.parametrize("kind", ["head-start", "source-queue"])
def test_a_run_folder_whose_driver_is_gone_is_removed_by_the_next_run(tmp_path, kind):
    """A driver killed with its watcher (a process group or cgroup killed whole, SIGKILL)
    leaves its head start's folder in the temporary folder, up to twice 2 GiB, and its source
    queue's (a claim file a source): the next run's folder of the same kind removes it. Left:
    a folder whose driver lives (this process; or a pid now used by another process, told
    apart by its start time), one marked by another machine or pid namespace (a temporary
    folder shared with a container: its pid says nothing here), one without a mark, other
    folders, and another kind's. Without a start time (no /proc, macOS) a live pid keeps its
    folder: every other run's folder was removed there."""
    from pipeline import head_start, source_queue
    from pipeline.run_folders import DRIVER, process_mark, remove_stale, where

    prefix = {"head-start": head_start.PREFIX, "source-queue": source_queue.PREFIX}[kind]
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    here = where()
    folders = {}
    for name, mark in [
        ("dead", f"{gone.pid} 12345 {here}"),
        ("reused", f"{os.getpid()} 1 {here}"),  # this pid, another start: that driver is gone
        ("unplaced", f"{gone.pid} 12345"),  # marked before the place was recorded
        ("dead-no-start", f"{gone.pid} - {here}"),
        ("alive", f"{process_mark(os.getpid())} {here}"),
        ("alive-no-start", f"{os.getpid()} - {here}"),
        ("another-namespace", f"{gone.pid} 12345 {here.split(':')[0]}:4026531836000"),
        ("another-machine", f"{gone.pid} 12345 another-boot-id:{here.split(':')[1]}"),
        ("unmarked", None),
    ]:
        folder = tmp_path / f"{prefix}{name}"
        (folder / "entries").mkdir(parents=True)
        (folder / "entries" / "x.npz").write_bytes(b"0" * 1000)
        if mark:
            (folder / DRIVER).write_text(mark)
        folders[name] = folder
    (tmp_path / "other-folder").mkdir()
    other_kind = (
        tmp_path / f"{head_start.PREFIX if kind == 'source-queue' else source_queue.PREFIX}x"
    )
    other_kind.mkdir()
    (other_kind / DRIVER).write_text(f"{gone.pid} 12345 {here}")  # not this kind's to remove
    removed = remove_stale(prefix, str(tmp_path))
    gone_ones = ("dead", "reused", "unplaced", "dead-no-start")
    assert sorted(removed) == sorted(str(folders[n]) for n in gone_ones)
    assert all(folders[n].exists() for n in folders if n not in gone_ones)
    assert (tmp_path / "other-folder").exists() and other_kind.exists()


def test_the_run_folders_are_marked_as_their_drivers(tmp_path, qwen3_dir, monkeypatch):
    """The folders a run makes carry its driver's mark (the Dask groups' queue and the head
    start's too, not only the DirectRunner queue of the test below), and removing the stale
    ones never takes a live run's: two queues made one after the other both stay."""
    from pipeline.config import BuildConfig
    from pipeline.head_start import HeadStart
    from pipeline.run_folders import DRIVER, process_mark, where
    from pipeline.source_queue import SourceQueue

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    mine = f"{process_mark(os.getpid())} {where()}"
    first = SourceQueue.create(["a", "b"], [2, 1], 2)
    second = SourceQueue.of_groups([["a"], ["b"]])
    config = replace(BuildConfig(books=[str(REPO / "README.md")], tokenizer=str(qwen3_dir)),
                     output=str(tmp_path / "out"))  # fmt: skip
    with HeadStart.for_run(config, 0, cores=16, dask=f"127.0.0.1:{_free_port()}") as ahead:
        folders = [first.folder, second.folder, ahead.folder]
        assert all(Path(f, DRIVER).read_text() == mine for f in folders), folders
        assert list(first.claims(0)) == ["a", "b"]  # the first queue still works
    for q in (first, second):
        q.remove()


def test_a_killed_multi_processing_runs_source_queue_is_removed_by_the_next_run(
    tmp_path, books_dir, qwen3_dir
):
    """A DirectRunner ``multi_processing`` driver killed with SIGKILL mid-run (with its pool
    server and workers, as the OOM killer or a scheduler's time limit does) cannot remove its
    source queue's folder; the next run on the machine removes it, and leaves none of its
    own."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(tmp), LONGCTX_HEAD_START="0")
    argv = ["--runner", "DirectRunner", "--direct_running_mode", "multi_processing",
            "--direct_num_workers", "2", "--tokenizer", str(qwen3_dir), "--quiet"]  # fmt: skip
    killed = subprocess.Popen(
        [sys.executable, "-m", "pipeline.run", *argv, "--books", str(books_dir),
         "--output", str(tmp_path / "killed")],  # fmt: skip
        cwd=REPO, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        # the queue made and marked as its driver's (a driver killed between the two leaves
        # an empty folder of no one's)
        while not list(tmp.glob("longctx-sources-*/driver")) and killed.poll() is None:
            assert time.monotonic() < deadline, "no source queue appeared"
            time.sleep(0.01)
    finally:  # the driver, its pool server and its workers
        with contextlib.suppress(ProcessLookupError):
            os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL, "the run ended before its queue was marked"
    left = list(tmp.glob("longctx-sources-*"))
    assert len(left) == 1, left  # the killed driver's, not removed by it
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.run", *argv, "--books", str(books_dir / BOOKS[0]),
         "--books", str(books_dir / BOOKS[1]), "--output", str(tmp_path / "next")],  # fmt: skip
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not left[0].exists()
    assert not list(tmp.glob("longctx-sources-*"))  # nor one of its own


def test_the_head_start_is_turned_off_by_its_environment_switch(monkeypatch, tmp_path):
    from pipeline.config import BuildConfig
    from pipeline.head_start import SWITCH, HeadStart

    config = BuildConfig(output=str(tmp_path / "out"))
    monkeypatch.setenv(SWITCH, "0")
    assert HeadStart.for_run(config, 16, cores=16) is None
    monkeypatch.delenv(SWITCH)
    with HeadStart.for_run(config, 16, cores=16) as ahead:
        assert ahead.processes == 12 and os.path.isdir(ahead.folder)
    assert not os.path.exists(ahead.folder)


@pytest.mark.parametrize("when", ["working", "done"])
def test_a_killed_driver_leaves_no_head_start_running_and_no_folder(tmp_path, books_dir, when):
    """The driver killed (SIGKILL: no cleanup of its own) while its helpers tokenize, or
    after they have taken everything: they take nothing more, end, and their folder (read
    texts and entries of the corpus, possibly) goes."""
    books = tmp_path / "books"  # helpers at work on two of three, or done with one
    books.mkdir()
    for name in BOOKS if when == "working" else BOOKS[:1]:
        shutil.copy(books_dir / name, books / name)
    code = (
        "import sys, time\n"
        "from pipeline.config import BuildConfig\n"
        "from pipeline.head_start import HeadStart\n"
        "config = BuildConfig(books=[sys.argv[1]], output=sys.argv[2])\n"
        "ahead = HeadStart.for_run(config, 2, cores=16)\n"
        "print(ahead.folder, ahead._proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", code, str(books), str(tmp_path / "out")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    folder, helper = driver.stdout.readline().split()
    deadline = time.monotonic() + 120
    held = Path(folder) / ("held" if when == "working" else "done")
    while not (held.is_dir() and any(held.iterdir())):  # at work / done
        assert time.monotonic() < deadline, sorted(str(p) for p in Path(folder).rglob("*"))
        time.sleep(0.05)
    driver.kill()
    driver.wait()
    while Path(folder).exists() or Path(f"/proc/{helper}").exists():
        assert time.monotonic() < deadline + 120, "the head start outlived its driver"
        time.sleep(0.1)
