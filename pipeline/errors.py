"""Why a run stops, and the exit status each cause gets (the README's table).

| status | cause | what is left in --output |
|---|---|---|
| 0 | output complete (rejected inputs are listed in rejects.jsonl) | the new output |
| 1 | any other failure (a crash; the log says where) | the previous output, untouched |
| 2 | an unusable flag or flag value | untouched |
| 3 | an input yields nothing usable (missing path, empty folder, no readable text, no text field) | untouched |
| 4 | an ``--incremental`` run would shrink the dataset past ``--shrink-threshold`` | untouched |
| 5 | another run holds the output folder's lock | untouched (the other run's) |
| 6 | not enough free disk space (found up front, or ENOSPC while writing) | untouched |

A scheduled job can tell "fix the job" (2) from "an input mount is missing" (3) from "the data
really shrank; look, then pass --allow-shrink" (4) from "try again later" (5, 6).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from typing import NoReturn

OK = 0
FAILURE = 1
USAGE = 2
UNUSABLE_INPUT = 3
SHRINK_REFUSED = 4
OUTPUT_LOCKED = 5
NO_SPACE = 6


class RunRefused(Exception):
    """A run stopped on purpose, before it replaced anything; ``status`` is its exit status."""

    status = FAILURE


class UsageError(RunRefused):
    """An unusable argument; the message names the flag or path."""

    status = USAGE


class UnusableInput(RunRefused):
    """An input that yields nothing usable; the message names the flag, the path and what was
    found there."""

    status = UNUSABLE_INPUT


class ShrinkRefused(RunRefused):
    """An ``--incremental`` run whose dataset would be much smaller than the last one."""

    status = SHRINK_REFUSED


class OutputLocked(RunRefused):
    """Another run is writing the same output folder."""

    status = OUTPUT_LOCKED


class NoSpace(RunRefused):
    """Not enough free disk space for the output."""

    status = NO_SPACE


def exit_now(status: int, forked: bool = False) -> NoReturn:
    """End this process with ``status`` as the interpreter's own exit would, up to the point
    where it tears down every module and object (~0.25 s once Beam is imported, ~0.3 s for a
    pipeline worker), which is skipped: the other threads are waited for (``threading``'s own
    shutdown, which also stops idle executors), the exit handlers run (``logging``'s flushes
    its handlers), the standard streams are flushed, then ``os._exit``. A standard stream that
    cannot be flushed (its reader gone: ``| head``, a closed log pipe) is said on stderr and
    makes a successful status 120, as the interpreter's exit does.

    For a process whose work is done and written: the driver after its summary, a helper
    whose answer was sent. A file opened and never closed is not flushed here: every file the
    pipeline writes is closed by a ``with``. Under a profiler or a tracer (``python -m
    cProfile``, ``coverage``, ``pdb``), which write their results at the interpreter's exit,
    this is the plain ``sys.exit``.

    ``forked``: a process forked from another that must never return into the code it was
    forked from (a pooled worker): it always ends here, and does not wait for the threads of
    Beam's harness."""
    shutdown = getattr(threading, "_shutdown", None)
    if not forked:
        if sys.getprofile() or sys.gettrace() or shutdown is None:
            sys.exit(status)
        shutdown()
    with contextlib.suppress(Exception):  # as an interpreter's exit would
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception as err:  # noqa: BLE001 - reported, as the interpreter's exit does
            with contextlib.suppress(Exception):
                os.write(2, f"Exception ignored on flushing {stream.name}: {err!r}\n".encode())
            status = status or 120
    os._exit(status)


@contextlib.contextmanager
def interrupt_ends_at_once(status: int = 130):
    """While this runs, Ctrl-C (SIGINT) ends the process at once with ``status``, for a
    helper's start (imports, the tokenizer's parse), which has nothing to clean up. Python's
    own KeyboardInterrupt, raised where it cannot propagate (a weakref callback of the import
    machinery), is printed as "Exception ignored in ..." under the run's message and lost,
    and the helper goes on (seen once in session 24's CI runs). Main thread only."""
    previous = signal.signal(signal.SIGINT, lambda *_: os._exit(status))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
