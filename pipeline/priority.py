"""Work that only fills idle cores runs at a lower CPU priority.

A many-core run's first seconds hold more work than cores. The driver imports Beam and makes
the graph, the worker pool's server forks the workers, and each worker starts its harness:
that path decides when the first file is read. Beside it the head start's helpers tokenize
ahead (``pipeline/head_start.py``) and the plot helper imports matplotlib
(``pipeline/plots.py``). Their work is only done earlier than it would be otherwise, so it
should take only the cores that path leaves. On nvidia-h200's 16 cores the 12 helpers, the 16
starting workers and the driver were 29 processes asking for 16 cores.

A helper raises its nice value by :data:`FILL_IN_NICE` first thing, before it starts a thread
or forks, so its threads and forks have it too. Under contention Linux's scheduler weighs a
nice-10 thread 110 against a nice-0 thread's 1024; with idle cores the value changes nothing.

A process may raise its nice value but not lower it again without privileges. So a Dask
worker's thread that does the head start's work is not lowered: the tokenizer's Rust threads
started from it would keep the low priority for the rest of the worker's life.
"""

from __future__ import annotations

import os

FILL_IN_NICE = 10


def lower() -> int | None:
    """Raise this process's nice value by :data:`FILL_IN_NICE` (on Linux the calling thread's,
    and so the whole process's before it starts a thread); the new value, or None where the
    system has no nice value or refuses."""
    try:
        return os.nice(FILL_IN_NICE)
    except (AttributeError, OSError):
        return None
