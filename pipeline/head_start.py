"""Tokenization started before Beam: the cores of a ``multi_processing`` run (or the workers of
a Dask cluster on this machine), idle while the driver and the workers import Beam and the
runner starts, tokenize the largest sources ahead.

On nvidia-h200's 16 cores a 16-worker run reads its first file 4-5.5 s after it starts: the
driver's Beam import (~1.9 s), its graph and ``to_runner_api`` (~1.4 s), the runner's first
stages; the workers, forked from ``pipeline.worker_pool``'s server, are ready at ~2.4 s and wait.
Beam's fixed start cannot be made shorter from here, so this module fills it with the run's
own work. :class:`HeadStart`, made by ``pipeline.run`` as soon as the flags are checked, starts
one helper process (no Beam: the tokenizer, the inputs' listing and the read and tokenize
functions only), which lists the inputs as the driver will (``pipeline.discover``), loads the
tokenizer and forks up to ``processes`` tokenizers. Each takes the next source nobody has taken,
largest first (the order the run's workers take them in), reads it with the read step's own
function and stores each document's entry (ids, chapters, windows, scores: the tokenize step's
own function, ``transforms.samples.entries.tokenize_entries``) under its cache key, as the read
step's early tokenizer does (``pipeline/steps/early.py``).

Copies of one text under other names (a replicated corpus, duplicates that duplicate removal
drops later) have one cache key: the first helper to read one claims the key and tokenizes it,
the others only read (the run's take removes an entry, so every copy tokenized ahead but one
was work lost: the benchmarks' replicated corpus had the helpers on such copies).

When the run's workers begin to read, the first of them writes ``STOP``: each helper finishes
the source in hand and exits. The run's read step takes every source as always; a source the
head start holds is waited for (a lock the helper holds while it works: a helper that dies
releases it); what the helper read is taken from here instead of read again (the same
function's output: code is parsed once), and its documents' entries instead of tokenized.
Anything missing (a helper gone, a document that duplicate removal changed) is read or
tokenized as before. The output is byte-identical; only where the work ran changes.

Where: DirectRunner ``multi_processing`` with at least :data:`MIN_CORES` cores, a local
output and the bundled or a local tokenizer.json (no Hub download or repository code in a
helper the run may not need), without ``--incremental`` (its cache decides what is tokenized),
unless the environment sets ``LONGCTX_HEAD_START=0``. What: local books and repositories of
at most :data:`SOURCE_CAP` bytes each, :data:`BUDGET` in all.

DaskRunner with a cluster up (``--dask_client_address`` at an address of this machine,
:func:`dask_address`): its workers idle while the driver starts too (~4-6 s at 16 workers),
and they, not helpers of this machine, do the work. The helper forks nothing and loads no
tokenizer: it lists the sources and hands them to the cluster, a Dask task a source
(:func:`work_on_dask_worker`: the same work, with the tokenizer the run's tokenize step then
finds loaded in that worker), no more at a time than ``processes_for`` leaves of the cores,
until ``STOP``; only where every worker is on this machine (they share the folder). Helpers of
their own beside the cluster were tried in session 19 and left out (1.04x the wall time: 12
more processes on 16 busy cores, and the copies above). On nvidia-h200's CPUs, 16 workers,
300 MB (docs/benchmarks.md, "Session 21"): 0.89x the wall time with the copies claimed once
(2 paired rounds), 0.97x before (7 rounds).

Run as ``python -m pipeline.head_start FOLDER PROCESSES`` (the run's settings come on stdin), or
``python -m pipeline.head_start FOLDER --dask ADDRESS CORES``.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import hashlib
import json
import logging
import os
import pickle
import select
import shutil
import signal
import subprocess
import sys
import threading
import time

from pipeline import remote, run_folders
from pipeline.errors import interrupt_ends_at_once
from pipeline.tokenizer_probe import ANSWER_KEYS

_LOG = logging.getLogger("longctx")

MIN_CORES = 8  # below this the driver's and the server's imports keep the cores busy
# What the helpers may take: sources up to SOURCE_CAP bytes each (a larger one would hold the
# worker that waits for it behind one single-threaded helper), BUDGET bytes in all (or an
# eighth of the temporary folder's free space): their read output and entries, about twice
# the input's bytes, wait on local disk until the run takes them, and the driver's listing of
# a huge input may take long.
SOURCE_CAP = 64 << 20
BUDGET = 2 << 30
SPARE_CORES = 4  # left to the driver, the worker pool's server and the plot helpers' imports
SWITCH = "LONGCTX_HEAD_START"  # "0" in the environment: no head start
STOP = "STOP"
PREFIX = "longctx-head-start-"  # the folders' names in the temporary folder
ENTRIES = "entries"  # FOLDER/entries/KEY.npz: the early tokenizer's entries (cache format)
HELD = "held"  # FOLDER/held/ID: a source taken, locked while it is worked on
DONE = "done"  # FOLDER/done/ID: "documents tokens" of a source finished
READ = "read"  # FOLDER/read/ID: what reading the source gave (pickled), for the read step
CLAIM = ".claim"  # FOLDER/entries/KEY.npz.claim: the text of KEY taken by a helper
_NEW_FILE = os.O_CREAT | os.O_EXCL | os.O_WRONLY
# The check of --tokenizer comes first on the helper's stdout, one JSON line as
# pipeline.tokenizer_probe prints it (the driver takes it instead of starting the probe's own
# process); the helper then closes it. Without a line by then (an end of file: it failed or
# died first), or after this long, the driver loads the tokenizer itself.
ANSWER_WAIT_S = 60.0
DASK_CONNECT_S = 10.0  # the Dask helper's connection to the scheduler (else: no head start)


def processes_for(workers: int, cores: int) -> int:
    """Helper tokenizers for a run of ``workers`` workers on ``cores`` cores (0: none)."""
    if cores < MIN_CORES:
        return 0
    return max(0, min(workers, cores - SPARE_CORES))


def dask_address(argv: list[str]) -> str | None:
    """The scheduler's address of a DaskRunner run of ``argv`` whose cluster is up already and
    has it on this machine (``--dask_client_address``, as ``python -m pipeline.dask_cluster``
    here prints it), else None (no head start): Beam's own local cluster starts with the run,
    and a scheduler file or another machine's address say nothing of where the workers are.
    The helper checks each worker's address too. Read before Beam is imported, with Beam's
    flag names (exact, no abbreviations)."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--runner")
    parser.add_argument("--dask_client_address")
    try:
        args, _ = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):
        return None
    if "dask" not in (args.runner or "").lower() or not args.dask_client_address:
        return None
    return args.dask_client_address if is_this_host(args.dask_client_address) else None


def is_this_host(address: str) -> bool:
    """Whether ``address`` (``[scheme://]host[:port]``) is one of this machine's: a loopback
    name or address, this machine's name, or an address a socket can be bound to here (no name
    is looked up: a DNS answer may be slow)."""
    import ipaddress
    import socket

    scheme, _, host = address.rpartition("://")
    if scheme == "inproc":  # a worker in this very process
        return True
    if host.startswith("["):  # [v6]:port
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    if host in ("", "localhost") or host == socket.gethostname():
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # another machine's name
    if ip.is_loopback or ip.is_unspecified:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))  # only an address of this machine's own interfaces binds
        return True
    return False


def reachable(address: str, timeout: float = 5.0) -> bool:
    """Whether something accepts a connection at ``[scheme://]host:port`` (a scheduler, a job
    server): a refused connection answers at once."""
    import socket

    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        with socket.create_connection(
            (host.strip("[]") or "localhost", int(port)), timeout=timeout
        ):
            return True
    except (OSError, ValueError):
        return False


def source_mark(doc_id: str) -> str:
    """A source's file name in ``held/`` and ``done/`` (ids hold ``/``)."""
    return hashlib.sha1(doc_id.encode("utf-8")).hexdigest()


class HeadStart:
    """The helper of one run; :attr:`folder` is handed to the steps (``BuildDataset``)."""

    def __init__(self, config, processes: int, dask: str | None = None, cores: int = 0):
        """``processes`` helper tokenizers forked here; or, with ``dask`` (a scheduler's
        address), none: the cluster's workers on this machine's ``cores`` do the sources
        (:func:`_feed_dask`)."""
        # marked as this driver's; the head-start folders of drivers gone are removed
        self.folder = run_folders.make(PREFIX)
        self.processes = processes
        self.dask = dask
        self.report: dict | None = None  # after close(): what the helper did
        where = ["--dask", dask, str(cores)] if dask else [str(processes)]
        command = [sys.executable, "-m", __name__, self.folder, *where]
        self._proc: subprocess.Popen | None = None
        self._answer: dict | None = None
        with contextlib.suppress(OSError):  # no helper: the run tokenizes everything itself
            # its own process group: stopped whole at the run's end (close)
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                # its stdout: the tokenizer's check only (what it leaves, the run redoes);
                # none on Dask, where this machine loads no tokenizer ahead
                stdout=subprocess.DEVNULL if dask else subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                process_group=0,
            )
            self._proc.stdin.write(pickle.dumps(config))
            self._proc.stdin.close()

    @classmethod
    def for_run(
        cls, config, workers: int, cores: int | None = None, dask: str | None = None
    ) -> HeadStart | None:
        """The head start of a run of ``workers`` multi_processing workers (0: another mode),
        or of a DaskRunner run on the cluster at ``dask`` (:func:`dask_address`), with
        settings ``config`` (a ``BuildConfig``); None where it does not apply."""
        from pipeline.worker_pool import local_tokenizer

        cores = (os.cpu_count() or 1) if cores is None else cores
        if os.environ.get(SWITCH) == "0" or config.incremental or remote.is_remote(config.output):
            return None
        if local_tokenizer(config.tokenizer) is None:  # a Hub id, repository code: not ahead
            return None
        if dask:
            return cls(config, 0, dask=dask, cores=cores) if cores >= MIN_CORES else None
        n = processes_for(workers, cores)
        return cls(config, n) if n else None

    @property
    def answers(self) -> bool:
        """Whether the helper answers the tokenizer's check (:meth:`tokenizer_answer`)."""
        return self.dask is None

    def tokenizer_answer(self, timeout: float = ANSWER_WAIT_S) -> dict:
        """The helper's check of the run's tokenizer (what ``pipeline.tokenizer_probe``
        prints), waited for; ``{}`` if the helper ended its answer without one (it failed or
        died first) or none came within ``timeout`` seconds (the driver then loads the
        tokenizer itself)."""
        if self._answer is None:
            self._answer = self._read_answer(timeout)
        return self._answer

    def _read_answer(self, timeout: float) -> dict:
        """The first line of the helper's stdout that is an answer (a line before it, printed
        by something else, is passed over), or ``{}``."""
        if self._proc is None or self._proc.stdout is None:
            return {}
        fd, data = self._proc.stdout.fileno(), b""
        # poll, not select: a driver embedded in a process holding over 1,024 descriptors
        # gets one that select() refuses
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in data:
                line, data = data.split(b"\n", 1)
                with contextlib.suppress(ValueError):
                    answer = json.loads(line)
                    if isinstance(answer, dict) and answer.keys() & ANSWER_KEYS:
                        return answer
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                return {}
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return {}
            data += chunk

    def close(self) -> None:
        """At the run's end (done, failed or refused: nothing waits for the helpers any more):
        stop them at once, keep their :attr:`report`, remove the folder."""
        stop(self.folder)
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
        self.report = _report(self.folder)
        if self.report["sources"]:
            _LOG.info(
                "head start: %d sources, %d documents, %d tokens tokenized before the "
                "workers began",
                self.report["sources"],
                self.report["documents"],
                self.report["tokens"],
            )
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def stop(folder: str) -> None:
    """Tell the helpers to take no more sources (the run's workers have begun)."""
    with contextlib.suppress(OSError):
        if not os.path.exists(os.path.join(folder, STOP)):
            with open(os.path.join(folder, STOP), "w"):
                pass


def wait_for(folder: str, doc_id: str) -> None:
    """Return once no helper works on source ``doc_id`` (at once if none took it). The run's
    read step calls it for each source: the file it makes where none is there marks the source
    taken, so no helper starts on it afterwards (``_take``)."""
    try:
        fd = os.open(os.path.join(folder, HELD, source_mark(doc_id)), os.O_RDONLY | os.O_CREAT)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # granted when the helper ends it, or dies
    finally:
        os.close(fd)


def read_items(folder: str, src) -> list | None:
    """What a helper's reading of source ``src`` gave (documents and rejects, in order), or
    None (not read ahead, or read as another source: the helper listed the inputs itself, and
    a file added meanwhile can shift an id's ``~N``); removed once taken."""
    path = os.path.join(folder, READ, source_mark(src.doc_id))
    try:
        with open(path, "rb") as f:
            read_as, items = pickle.load(f)
    except (OSError, EOFError, ValueError, pickle.UnpicklingError):
        return None
    with contextlib.suppress(OSError):
        os.unlink(path)
    return items if read_as == src else None


def entries(folder: str) -> str:
    return os.path.join(folder, ENTRIES)


def has_entry(folder: str, key: str) -> bool:
    from pipeline.entries import file_name

    return os.path.exists(os.path.join(entries(folder), file_name(key)))


def _report(folder: str) -> dict:
    """What the helpers did: sources whose documents they tokenized, with those documents and
    tokens, and sources ``read`` in all (a copy of a text tokenized once is read only); the
    entries nobody
    took (a document that duplicate removal changed, or left out) and the sources read ahead
    that the read step did not take (none, unless the run failed)."""
    sources = documents = tokens = read = 0
    with contextlib.suppress(OSError):
        for name in os.listdir(os.path.join(folder, DONE)):
            with contextlib.suppress(OSError, ValueError):
                with open(os.path.join(folder, DONE, name)) as f:
                    d, t = (int(x) for x in f.read().split())
                read += 1
                if d:  # a source whose texts another source's helper tokenized: read only
                    sources, documents, tokens = sources + 1, documents + d, tokens + t
    left = {}
    for sub, suffix in ((ENTRIES, ".npz"), (READ, "")):
        try:
            names = os.listdir(os.path.join(folder, sub))
        except OSError:
            names = []
        left[sub] = sum(n.endswith(suffix) and ".tmp-" not in n for n in names)
    return {
        "sources": sources,
        "read": read,
        "documents": documents,
        "tokens": tokens,
        "untaken": left[ENTRIES],
        "unread": left[READ],
    }


def _take(folder: str, doc_id: str) -> int | None:
    """Take source ``doc_id``: its file in ``held/`` appears already locked (made and locked
    under a name of its own, then linked in place), so the run's read step, which makes the
    file itself if it is not there (:func:`wait_for`), either finds it locked or has taken the
    source first. The descriptor, or None if the source is taken."""
    path = os.path.join(folder, HELD, source_mark(doc_id))
    if os.path.exists(path):
        return None
    own = f"{path}.{os.getpid()}-{threading.get_ident()}"
    fd = os.open(own, os.O_CREAT | os.O_EXCL | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.link(own, path)
    except OSError:  # FileExistsError: taken meanwhile
        os.close(fd)
        return None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(own)
    return fd


def _work(folder: str, sources: list, config, tok) -> None:
    """One helper: sources taken one at a time, largest first, until ``STOP``, its parent
    gone, or the end."""
    parent = os.getppid()
    for src in sources:
        if os.path.exists(os.path.join(folder, STOP)) or os.getppid() != parent:
            return
        _work_on(folder, src, config, lambda: tok)


def _work_on(folder: str, src, config, tokenizer) -> None:
    """Source ``src`` read and its documents' entries stored, unless it is taken already;
    ``tokenizer()`` gives the tokenizer (loaded once the source is taken). Given up, the
    source left to the run, where the folder is gone: the run has ended (HeadStart.close)."""
    from pipeline.discover import read_source
    from pipeline.entries import document_key, store_local, write_whole
    from transforms.documents import TextDocument
    from transforms.samples.entries import (
        content_sha256,
        tokenize_entries,
        worth_tokenizing_early,
    )

    try:
        fd = _take(folder, src.doc_id)
    except OSError:  # no folder: the run has ended, or this machine does not see it
        return
    if fd is None:
        return
    try:
        tok = tokenizer()
        items = list(read_source(src, config.read_settings))
        docs, keys = [], []
        for d in items:
            if isinstance(d, TextDocument) and worth_tokenizing_early(d):
                key = document_key(content_sha256(d), tok, config)
                if _claim(folder, key):  # a text another source holds too is made once
                    docs.append(d)
                    keys.append(key)
        if not os.path.isdir(folder):  # the run ended while this read
            return
        n_tokens = 0
        for key, entry in zip(keys, tokenize_entries(docs, tok, config), strict=True):
            store_local(entries(folder), key, entry)
            n_tokens += int(entry["tokens"].shape[0])
        read_path = os.path.join(folder, READ, source_mark(src.doc_id))
        write_whole(read_path, pickle.dumps((src, items)))
        with open(os.path.join(folder, DONE, source_mark(src.doc_id)), "w") as f:
            f.write(f"{len(docs)} {n_tokens}")
    except Exception as err:  # noqa: BLE001 - the run's own steps read and report it
        _LOG.debug("head start: %s left to the run: %s", src.doc_id, err)
    finally:
        os.close(fd)  # the lock goes with it


def _claim(folder: str, key: str) -> bool:
    """Whether this helper is the first to take the text of cache key ``key`` (copies of one
    file, under other names, have one key; their first reader tokenizes it, the others not)."""
    from pipeline.entries import file_name

    try:
        os.close(os.open(os.path.join(entries(folder), file_name(key) + CLAIM), _NEW_FILE))
    except FileExistsError:
        return False
    return True


def work_on_dask_worker(folder: str, src, config) -> None:
    """A Dask task (:func:`_feed_dask`): source ``src`` done ahead by the worker that runs it,
    with the tokenizer the run's tokenize step then finds loaded in this process (taken
    first, loaded after); nothing once the run's workers have begun or the run has ended (no
    folder: ``_work_on`` cannot take the source)."""
    if os.path.exists(os.path.join(folder, STOP)):
        return
    from transforms.samples.tokenize import load_tokenizer

    _work_on(
        folder, src, config, lambda: load_tokenizer(config.tokenizer, config.trust_remote_code)
    )


def make_folders(folder: str) -> None:
    for sub in (HELD, DONE, ENTRIES, READ):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)


def _sources(config, folder: str) -> list:
    """The sources the helpers may take, in the order the run's workers take them (largest
    first, as ``SourceQueue``): local books and repositories of at most SOURCE_CAP bytes, up to
    the budget (records files: many short documents, nothing to tokenize ahead)."""
    from pipeline.discover import BOOK, REPO, discover_inputs
    from pipeline.guard import input_bytes
    from transforms.balance import largest_first

    sources, _ = discover_inputs(config)
    sizes = [input_bytes([s.path]) for s in sources]  # as the driver's (Job.source_bytes)
    order = largest_first(sizes)
    budget = min(BUDGET, shutil.disk_usage(folder).free // 8)
    out = []
    for i in order:
        src = sources[i]
        if src.kind not in (BOOK, REPO) or remote.is_remote(src.path) or sizes[i] > SOURCE_CAP:
            continue
        if sizes[i] > budget:
            continue
        budget -= sizes[i]
        out.append(src)
    return out


def _serve(folder: str, processes: int) -> int:
    config = pickle.loads(sys.stdin.buffer.read())
    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one core each: they run side by side
    driver = os.getppid()
    # Ctrl-C during the start ends this process at once (its forks keep Python's handling)
    with interrupt_ends_at_once():
        try:
            try:
                from pipeline.tokenizer_probe import check

                answer, tok = check(config.tokenizer, config.trust_remote_code)
                with contextlib.suppress(OSError):
                    os.write(1, json.dumps(answer).encode() + b"\n")
            finally:  # answered or not: the end of it (the helpers forked below do not hold it)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.close(devnull)
            if tok is None:
                raise ValueError(answer)
            tok.newline_tables()  # built once before the fork, not in every helper
            local = _sources(config, folder)
            make_folders(folder)
        except Exception:  # noqa: BLE001 - the driver reports a bad flag or input, by name
            local = []
    # what the helpers read allocates fast (ast): the imports and the tokenizer out of the
    # collector's sweeps, as the run's read step does (pipeline.steps.common.freeze_heap_once)
    gc.freeze()
    children = set()
    for _ in range(processes):
        if os.path.exists(os.path.join(folder, STOP)):
            break
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _work(folder, local, config, tok)
            except BaseException:  # noqa: BLE001 - never a traceback of its own
                code = 1
            finally:
                os._exit(code)
        children.add(pid)
    while children:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        if pid:
            children.discard(pid)
            continue
        if os.getppid() != driver:  # the driver is gone: its helpers take nothing more
            stop(folder)
        time.sleep(0.05)
    _watch(folder, driver)
    return 0


def _watch(folder: str, driver: int) -> None:
    """The folder is the run's until it ends: HeadStart.close removes it (and stops this
    process). A driver that dies without closing (SIGKILL, the OOM killer) leaves it to us.
    What waits for that is a fresh interpreter in this process: this one holds the tokenizer
    and the inputs' listing (~250 MB) for nothing while the run's workers need the memory."""
    argv = ["-c", folder, str(driver)]  # sys.argv of `python -S -c _WATCH folder driver`
    with contextlib.suppress(OSError):
        os.execv(sys.executable, [sys.executable, "-S", "-c", _WATCH, *argv[1:]])
    sys.argv = argv  # no exec: the same wait here
    exec(_WATCH, {"__name__": "__watch__"})


def _serve_dask(folder: str, address: str, cores: int) -> int:
    """The head start of a DaskRunner run: the cluster's own workers, idle while the driver
    starts, do the sources ahead (:func:`_feed_dask`); this process only lists them and hands
    them out. No tokenizer check is answered (stdout is not read)."""
    config = pickle.loads(sys.stdin.buffer.read())
    driver = os.getppid()
    try:
        local = _sources(config, folder)
        make_folders(folder)
        _feed_dask(folder, address, cores, local, config, driver)
    except Exception as err:  # noqa: BLE001 - only a head start: the run does it all itself
        _LOG.debug("no head start on the Dask cluster at %s: %s", address, err)
    _watch(folder, driver)
    return 0


def _feed_dask(folder: str, address: str, cores: int, sources: list, config, driver: int) -> None:
    """Hand ``sources`` to the workers of the cluster at ``address``, a task a source
    (:func:`work_on_dask_worker`), no more at a time than ``processes_for`` gives for the
    workers' threads on this machine's ``cores`` (the fewer of the threads and the cores less
    ``SPARE_CORES``; a task waiting at the scheduler when the run's own arrive would go before
    them), until ``STOP``, the driver gone, or the end. Only where every worker is on this
    machine: they must see the folder, as the run's steps on them then do."""
    if not sources:
        return
    from distributed import Client

    from pipeline.head_start import work_on_dask_worker  # by reference: not this __main__'s

    if not reachable(address, timeout=2.0):
        return  # nobody there: a Client would retry a refused connection until its timeout
    with Client(address, timeout=DASK_CONNECT_S, set_as_default=False) as client:
        threads = client.nthreads()  # every worker's, by address
        if not threads or not all(is_this_host(w) for w in threads):
            return
        # on the cores the driver (importing Beam, making the graph) and the scheduler leave
        slots = processes_for(sum(threads.values()), cores)
        if not slots:
            return
        pending, todo = [], sources[::-1]  # popped: largest first
        while todo or pending:
            if os.path.exists(os.path.join(folder, STOP)) or os.getppid() != driver:
                return
            pending = [f for f in pending if not f.done()]
            while todo and len(pending) < slots:
                task = client.submit(work_on_dask_worker, folder, todo.pop(), config, pure=False)
                pending.append(task)
            time.sleep(0.02)
    # leaving: the tasks not begun are dropped with their futures; those begun finish the
    # source in hand (its lock held until then)


# The head start's last part, alone in a fresh interpreter (no site: nothing but os, shutil)
_WATCH = """import os, shutil, sys, time
folder, driver = sys.argv[1], int(sys.argv[2])
while os.getppid() == driver:
    time.sleep(0.2)
shutil.rmtree(folder, ignore_errors=True)
"""


if __name__ == "__main__":
    dask_mode = len(sys.argv) == 5 and sys.argv[2] == "--dask"
    if len(sys.argv) != 3 and not dask_mode:
        sys.exit(
            "usage: python -m pipeline.head_start FOLDER (PROCESSES | --dask ADDRESS CORES) "
            "(pipeline.run starts it)"
        )
    try:
        if dask_mode:
            sys.exit(_serve_dask(sys.argv[1], sys.argv[3], int(sys.argv[4])))
        sys.exit(_serve(sys.argv[1], int(sys.argv[2])))
    except KeyboardInterrupt:
        sys.exit(130)
