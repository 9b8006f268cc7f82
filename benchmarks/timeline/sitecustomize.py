"""Per-process time of the pipeline's own DoFns, for ``benchmarks/scaling.py`` (imported by every
Python process that has this folder on PYTHONPATH and BEAM_TIMELINE_DIR set; does nothing
otherwise). Each process writes ``BEAM_TIMELINE_DIR/<pid>.json``: for each DoFn method of
``pipeline.steps`` (``ReadSourceFn.process``, ``TokenizeFn.process``, ...) the seconds spent in
it (a generator's own time, not its consumer's), the calls, and the wall-clock times of the first
call's start and the last call's end; also each DoFn's ``setup`` and the times this process
started (``process.start``) and had Beam and the steps imported (``process.imported``). In the
driver, each stage's bundles as the runner executes them (``stage:<name>``) and the parts of
``pipeline.job`` (``job.execute``, ``job.finalize``, ...). Never raises: a failure to hook only
prints a line."""

import atexit
import functools
import inspect
import json
import os
import time

_DIR = os.environ.get("BEAM_TIMELINE_DIR")
_ACC: dict = {}
_STARTED = time.time()  # this module runs as the interpreter starts (site)


def _dump() -> None:
    try:
        tmp = os.path.join(_DIR, f".{os.getpid()}.tmp")
        text = json.dumps(dict(_ACC))  # a copy made at once: another thread may add a key
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(_DIR, f"{os.getpid()}.json"))
    except OSError:
        pass


_LAST = [0.0]


def _note(name: str, start: float, spent: float, final: bool) -> None:
    a = _ACC.setdefault(name, [0.0, 0, start, start + spent])
    a[0] += spent
    a[1] += 1
    a[2] = min(a[2], start)
    a[3] = max(a[3], time.time())
    now = time.time()
    if final or now - _LAST[0] > 1.0:  # at a bundle's end, else at most once a second
        _LAST[0] = now
        _dump()


def _wrap_call(name, fn):
    """A plain method (``setup``, ``start_bundle``): its seconds and first start / last end."""

    @functools.wraps(fn)
    def timed(*args, **kwargs):
        start = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            _note(name, start, time.time() - start, True)

    return timed


def _wrap(name, fn, final):
    @functools.wraps(fn)
    def timed(*args, **kwargs):
        start = time.time()
        result = fn(*args, **kwargs)
        spent = time.time() - start
        if inspect.isgenerator(result):
            while True:
                t = time.time()
                try:
                    item = next(result)
                except StopIteration:
                    spent += time.time() - t
                    break
                spent += time.time() - t
                yield item
        elif result is not None:
            yield from result
        _note(name, start, spent, final)

    return timed


_STEPS = ("read", "tokenize", "plan", "write", "early")
# Step functions that run as a Map / FlatMap (not a DoFn's method), hooked by name; and the
# early tokenizer's encode (pipeline/steps/early.py, in its background thread)
_FUNCTIONS = {
    "plan": ("plan_to_assignments",),  # called once a run
    "write": ("write_run_files",),  # called once a run
    "early": ("tokenize_entry",),
}


def _hook(mod) -> None:
    """Wrap the DoFn methods of one of ``pipeline.steps``' modules, just imported."""
    import apache_beam as beam  # imported already: the steps import it

    for cname, cls in list(vars(mod).items()):
        if inspect.isclass(cls) and issubclass(cls, beam.DoFn) and cls.__module__ == mod.__name__:
            for meth in ("process", "finish_bundle"):
                if meth in vars(cls):
                    wrapped = _wrap(f"{cname}.{meth}", vars(cls)[meth], meth == "finish_bundle")
                    setattr(cls, meth, wrapped)
            if "setup" in vars(cls):
                cls.setup = _wrap_call(f"{cname}.setup", vars(cls)["setup"])
    for fname in _FUNCTIONS.get(mod.__name__.rsplit(".", 1)[1], ()):
        fn = getattr(mod, fname, None)
        if fn is not None and inspect.isgeneratorfunction(fn):
            setattr(mod, fname, _wrap(fname, fn, True))
        elif fn is not None:
            setattr(mod, fname, _wrap_call(fname, fn))


def _hook_runner(mod) -> None:
    """The driver: each bundle the runner executes, as ``stage:<name>`` (its seconds, its first
    start and last end), so that the stages after the fused read + tokenize one are told apart."""
    cls = mod.FnApiRunner
    run = cls._execute_bundle

    @functools.wraps(run)
    def timed(self, context, manager, *args, **kwargs):
        start = time.time()
        try:
            return run(self, context, manager, *args, **kwargs)
        finally:
            name = manager.stage.name
            _note(f"stage:{name[:80]}", start, time.time() - start, True)

    cls._execute_bundle = timed


def _hook_job(mod) -> None:
    """The driver: ``pipeline.job``'s run and finalize, and the parts of finalize."""
    for name in ("prepare", "execute", "finalize", "build_manifest", "write_report", "publish",
                 "read_table", "summary"):  # fmt: skip
        if callable(getattr(mod, name, None)):
            setattr(mod, name, _wrap_call(f"job.{name}", getattr(mod, name)))


def _note_start(name, fn):
    """A call that lasts as long as the process (a worker's harness): when it began only."""

    @functools.wraps(fn)
    def noted(*args, **kwargs):
        _note(name, time.time(), 0.0, True)
        return fn(*args, **kwargs)

    return noted


def _hook_harness_main(mod) -> None:
    """A worker: when Beam's harness began (after the fork, for a pooled worker) and how long
    it took to make the harness (options, logging, SdkHarness)."""
    mod.main = _note_start("harness.main", mod.main)
    mod.create_harness = _wrap_call("harness.create", mod.create_harness)


def _hook_harness(mod) -> None:
    """A worker: when the harness began serving the runner (its control channel)."""
    mod.SdkHarness.run = _note_start("harness.run", mod.SdkHarness.run)


def _hook_handlers(mod) -> None:
    """The driver: the time spent getting (starting) the workers for each stage."""
    cls = mod.WorkerHandlerManager
    cls.get_worker_handlers = _wrap_call("workers.get", cls.get_worker_handlers)


def _hook_discover(mod) -> None:
    """``pipeline.discover``: the listing of the inputs and the reading of each source,
    wherever they run (the head start runs as ``__main__``, which no import hook sees: its
    helpers are the processes that read sources outside the read step)."""
    mod.discover_inputs = _wrap_call("discover.inputs", mod.discover_inputs)
    mod.read_source = _wrap_call("discover.read_source", mod.read_source)


def _hook_probe(mod) -> None:
    """The tokenizer's check (``pipeline.tokenizer_probe.check``), wherever it runs."""
    mod.check = _wrap_call("tokenizer.check", mod.check)


def _hook_head_start(mod) -> None:
    """The head start's work on one source where it is imported (a Dask worker's task; the
    helper processes of DirectRunner's run it as ``__main__``, which no hook sees)."""
    mod._work_on = _wrap_call("head_start.work_on", mod._work_on)
    # a Dask worker's whole task: the tokenizer's load on its first one too
    mod.work_on_dask_worker = _wrap_call("head_start.task", mod.work_on_dask_worker)


_DRIVER = {
    "pipeline.discover": _hook_discover,
    "pipeline.head_start": _hook_head_start,
    "pipeline.tokenizer_probe": _hook_probe,
    "apache_beam.runners.portability.fn_api_runner.fn_runner": _hook_runner,
    "apache_beam.runners.portability.fn_api_runner.worker_handlers": _hook_handlers,
    "apache_beam.runners.worker.sdk_worker_main": _hook_harness_main,
    "apache_beam.runners.worker.sdk_worker": _hook_harness,
    "pipeline.job": _hook_job,
}


class _AfterImport:
    """Hooks each step module as it is imported, so that this aid imports nothing itself: a
    process pays for Beam when and where the pipeline does (importing Beam here, at the
    interpreter's start, delayed the driver by ~2 s and hid what happens before that)."""

    def find_spec(self, name, path=None, target=None):
        step = name.startswith("pipeline.steps.") and name.rsplit(".", 1)[1] in _STEPS
        if not step and name not in _DRIVER:
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader_exec = spec.loader.exec_module

        def exec_module(module):
            loader_exec(module)
            try:
                if not step:
                    _DRIVER[name](module)
                    return
                _hook(module)
                _DONE.add(name)
                if len(_DONE) == len(_STEPS):  # the pipeline's steps (and Beam) imported
                    _note("process.imported", time.time(), 0.0, True)
            except Exception as err:  # noqa: BLE001 - a benchmark aid must not break the run
                print(f"benchmarks/timeline: not hooked: {type(err).__name__}: {err}")

        spec.loader.exec_module = exec_module
        return spec


# The stack sampler (BEAM_TIMELINE_STACKS=<ms>): every <ms>, each thread's CPU time since the
# last sample (Linux: /proc/self/task/<tid>/stat) is put on the Python stack it is in now, and
# summed by (half-second bucket, thread, innermost frames) in ``BEAM_TIMELINE_DIR/<pid>.stacks.json``;
# read by ``benchmarks/stacks.py``. With BEAM_TIMELINE_WALL=1 each main thread's stack is also
# counted in wall seconds, apart (``wall_s``; ``stacks.py --wall``). It sees where CPU goes outside the hooked DoFns: the driver
# before the first read, a Dask scheduler, the tail after the last tokenize. Threads without a
# Python frame (the tokenizer's rayon pool) are summed as one "native" entry.
_STACK_BUCKET_S = 0.5
_STACK_DEPTH = 16  # innermost frames kept per sample


def _sample_stacks(interval: float) -> None:
    import sys
    import threading

    tick = os.sysconf("SC_CLK_TCK")
    cpu: dict = {}  # thread id -> CPU seconds at the last sample
    counts: dict = {}
    me = threading.get_ident()
    last_dump = time.time()
    pid = os.getpid()
    path = os.path.join(_DIR, f"{pid}.stacks.json")

    def thread_cpu(tid) -> float:
        try:
            with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            return 0.0

    def dump() -> None:
        # from the sampler and, at exit, from the main thread: each its own temporary file,
        # and a copy of the counts (the other thread may be adding to them); not from a forked
        # child, which inherits this at-exit call with the counts as they were at the fork
        if os.getpid() != pid:
            return
        try:
            for _ in range(3):
                try:
                    snapshot, wall_snapshot = dict(counts), dict(walls)
                    break
                except RuntimeError:  # changed size during the copy
                    continue
            else:
                return
            tmp = f"{path}.tmp-{threading.get_ident()}"
            with open(tmp, "w") as f:
                json.dump({"argv": sys.argv[:4], "bucket_s": _STACK_BUCKET_S,
                           "interval_s": interval, "cpu_s": snapshot,
                           "wall_s": wall_snapshot}, f)  # fmt: skip
            os.replace(tmp, path)
        except Exception:  # noqa: BLE001 - a benchmark aid must not break the run
            pass

    def add(key: str, seconds: float) -> None:
        if seconds > 0:
            counts[key] = round(counts.get(key, 0.0) + seconds, 4)

    atexit.register(dump)
    # BEAM_TIMELINE_WALL=1: the main thread's stack also counted in wall seconds, apart
    # ("wall_s"; benchmarks/stacks.py --wall), so that where it waits (a lock, a socket,
    # another process) shows too
    wall = os.environ.get("BEAM_TIMELINE_WALL") == "1"
    walls: dict = {}
    main = threading.main_thread().ident
    before = time.time()
    while True:
        time.sleep(interval)
        now = time.time()
        elapsed, before = now - before, now
        bucket = int(now / _STACK_BUCKET_S)
        threads = {t.ident: t for t in threading.enumerate()}
        frames = sys._current_frames()
        python_tids = set()
        for ident, frame in frames.items():
            t = threads.get(ident)
            if ident == me or t is None or t.native_id is None:
                continue
            python_tids.add(t.native_id)
            now_cpu = thread_cpu(t.native_id)
            spent = now_cpu - cpu.get(t.native_id, now_cpu)
            cpu[t.native_id] = now_cpu
            stack = []
            f = frame
            while f is not None and len(stack) < _STACK_DEPTH:
                c = f.f_code
                stack.append(f"{os.path.basename(c.co_filename)}:{c.co_name}:{f.f_lineno}")
                f = f.f_back
            add(f"{bucket}|{t.name}|" + ";".join(reversed(stack)), spent)
            if wall and ident == main:
                key = f"{bucket}|MainThread|" + ";".join(reversed(stack))
                walls[key] = round(walls.get(key, 0.0) + elapsed, 4)
        try:
            native = [int(x) for x in os.listdir("/proc/self/task")]
        except OSError:
            native = []
        spent = 0.0
        for tid in native:
            if tid in python_tids or tid == threading.get_native_id():
                continue
            now_cpu = thread_cpu(tid)
            spent += now_cpu - cpu.get(tid, now_cpu)
            cpu[tid] = now_cpu
        add(f"{bucket}|native threads|(no Python frame)", spent)
        if now - last_dump > 2.0:
            last_dump = now
            dump()


def _start_sampler(value: str) -> None:
    try:
        ms = float(value)
    except ValueError:
        ms = 0.0
    if not ms >= 1.0:  # also NaN
        print(f"benchmarks/timeline: BEAM_TIMELINE_STACKS={value!r}: not a number of ms >= 1")
        return
    import threading

    threading.Thread(
        target=_sample_stacks, args=(ms / 1000.0,), name="timeline-stacks", daemon=True
    ).start()


_DONE: set = set()
if _DIR and os.environ.get("BEAM_TIMELINE_STACKS"):
    _start_sampler(os.environ["BEAM_TIMELINE_STACKS"])
    # a forked process (a pooled DirectRunner worker, a head-start helper) has no sampler thread:
    # its own, writing <its pid>.stacks.json
    _STACKS_MS = os.environ["BEAM_TIMELINE_STACKS"]
    os.register_at_fork(after_in_child=lambda: _start_sampler(_STACKS_MS))
if _DIR:
    import sys

    # the last notes of a process (dumps are at most once a second); none where the pipeline
    # never ran (only the start noted)
    atexit.register(lambda: len(_ACC) > 1 and _dump())
    _ACC["process.start"] = [0.0, 1, _STARTED, _STARTED]  # when this process started
    sys.meta_path.insert(0, _AfterImport())
