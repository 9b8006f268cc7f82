"""Temporary folders that one run's driver makes on its machine, and their removal once that
driver is gone.

A run removes its folders as it ends (``finally`` blocks, a watcher process). A driver killed
with SIGKILL (the OOM killer, a scheduler's time limit, a process group or cgroup killed whole)
runs none of that, and a scheduled job that is killed night after night would fill the
temporary folder. So each folder holds a mark of its driver (:data:`DRIVER`: its pid, its
start time, and where that pid means something: the machine since its boot and the pid
namespace), and the next run that makes a folder of the same kind removes the folders whose
driver no longer runs (:func:`remove_stale`). A folder is left where its driver runs, where
the mark says another machine or pid namespace made it (a temporary folder shared with a
container, or over a network: its pid says nothing here), or where it cannot be told (being
made, no mark, another user's folder).

Whether a process runs (:func:`running`) is asked here for the worker pool's forked workers
too (``pipeline/worker_pool.py``).

Kinds (prefixes): the head start's (``pipeline/head_start.py``: read texts and entries, up to
twice its budget) and the source queue's (``pipeline/source_queue.py``: one claim file a
source, and a Dask run's groups).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

DRIVER = "driver"  # FOLDER/driver: "PID START WHERE" of the run's driver
NO_START = "-"  # the start time where it cannot be read (no /proc: macOS)


def process_mark(pid: int) -> str | None:
    """``"PID START"`` of a live process (its start in clock ticks since boot: a pid used
    again later is another process), or None where it is gone or unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return f"{pid} {fields[19]}"  # field 22, counted after the command's ")"


def boot() -> str:
    """This machine since its last boot (Linux's boot id), else its name."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return socket.gethostname()


def where() -> str:
    """Where this process's pids mean something: the machine since its last boot
    (:func:`boot`) and its pid namespace (a container has its own)."""
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = "-"
    return f"{boot()}:{namespace}"


def running(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (exited, not yet reaped by its parent) does not."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): a signal 0 reaches a zombie too, the best there is
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def make(prefix: str) -> str:
    """A new folder ``prefix*`` in the temporary folder, marked as this process's (the run's
    driver); the folders of the same kind whose driver is gone are removed first."""
    remove_stale(prefix)
    folder = tempfile.mkdtemp(prefix=prefix)
    mark = process_mark(os.getpid()) or f"{os.getpid()} {NO_START}"
    # the mark appears whole (a driver killed while writing it would leave an empty one, a
    # folder never judged); killed before it appears, an empty folder of no one's is left
    part = os.path.join(folder, f".{DRIVER}.part")
    try:
        with open(part, "w") as f:
            f.write(f"{mark} {where()}")
        os.replace(part, os.path.join(folder, DRIVER))
    except OSError:
        pass  # unmarked: never judged stale, removed by its run as before
    return folder


def remove_stale(prefix: str, root: str | None = None) -> list[str]:
    """Remove the folders ``prefix*`` in ``root`` (the temporary folder) whose ``DRIVER`` was
    a process of this machine and pid namespace that no longer runs; the folders removed."""
    root = root or tempfile.gettempdir()
    here = where()
    removed = []
    try:
        names = [n for n in os.listdir(root) if n.startswith(prefix)]
    except OSError:
        return removed
    for name in names:
        folder = os.path.join(root, name)
        try:
            with open(os.path.join(folder, DRIVER)) as f:
                fields = f.read().split()
            pid, start = int(fields[0]), fields[1] if len(fields) > 1 else NO_START
        except (OSError, ValueError, IndexError):
            continue  # being made, or not ours to judge
        if len(fields) > 2 and fields[2] != here:
            continue  # another machine's or container's pid
        if start != NO_START and process_mark(pid) == f"{pid} {start}":
            continue  # its driver runs
        if start == NO_START and running(pid):
            continue  # no start time recorded: a live pid may still be its driver
        shutil.rmtree(folder, ignore_errors=True)
        if not os.path.exists(folder):
            removed.append(folder)
    return removed
