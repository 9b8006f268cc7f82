"""Temporary folders that one run's driver makes on its machine, and their removal once that
driver is gone.

A run removes its folders as it ends (``finally`` blocks, a watcher process). A driver killed
with SIGKILL (the OOM killer, a scheduler's time limit, a process group or cgroup killed whole)
runs none of that, and a scheduled job that is killed night after night would fill the
temporary folder. So each folder holds its driver's pid and start time (:data:`DRIVER`), and
the next run of any driver on the machine removes the folders of the same kind whose driver no
longer runs (:func:`remove_stale`). A folder whose driver is alive, or that cannot be told
(being made, no mark, another user's), is left.

Kinds (prefixes): the head start's (``pipeline/head_start.py``: read texts and entries, up to
twice its budget) and the source queue's (``pipeline/source_queue.py``: one claim file a
source, and a Dask run's groups).
"""

from __future__ import annotations

import os
import shutil
import tempfile

DRIVER = "driver"  # FOLDER/driver: "PID START" of the run's driver


def process_mark(pid: int) -> str | None:
    """``"PID START"`` of a live process (its start in clock ticks since boot: a pid used
    again later is another process), or None where it is gone or unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return f"{pid} {fields[19]}"  # field 22, counted after the command's ")"


def make(prefix: str) -> str:
    """A new folder ``prefix*`` in the temporary folder, marked as this process's (the run's
    driver); the folders of the same kind whose driver is gone are removed first."""
    remove_stale(prefix)
    folder = tempfile.mkdtemp(prefix=prefix)
    # the mark appears whole (a driver killed while writing it would leave an empty one, a
    # folder never judged); killed before it appears, an empty folder of no one's is left
    part = os.path.join(folder, f".{DRIVER}.part")
    try:
        with open(part, "w") as f:
            f.write(process_mark(os.getpid()) or str(os.getpid()))
        os.replace(part, os.path.join(folder, DRIVER))
    except OSError:
        pass  # unmarked: never judged stale, removed by its run as before
    return folder


def remove_stale(prefix: str, root: str | None = None) -> list[str]:
    """Remove the folders ``prefix*`` in ``root`` (the temporary folder) whose ``DRIVER``
    process no longer runs; the folders removed."""
    root = root or tempfile.gettempdir()
    removed = []
    try:
        names = [n for n in os.listdir(root) if n.startswith(prefix)]
    except OSError:
        return removed
    for name in names:
        folder = os.path.join(root, name)
        try:
            with open(os.path.join(folder, DRIVER)) as f:
                mark = f.read().strip()
            pid = int(mark.split()[0])
        except (OSError, ValueError, IndexError):
            continue  # being made, or not ours to judge
        if process_mark(pid) == mark:  # its driver runs
            continue
        if " " not in mark and os.path.exists(f"/proc/{pid}"):
            continue  # no start time recorded: a live pid may still be its driver
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
