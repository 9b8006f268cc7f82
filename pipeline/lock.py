"""One run at a time per output folder: an exclusive lock on ``OUT/.lock``.

A cron job that overlaps the previous one would otherwise share its staging and caches. The lock
is a POSIX ``flock`` on ``OUT/.lock``: the kernel releases it when the holder exits, however it
exits, so a lock left by a killed run is simply taken over (the file's old contents name the
dead holder; we log that). The file records the holder's pid, host and start time, which a
second run prints when it refuses (exit 5, ``errors.OUTPUT_LOCKED``). The file is removed when
the run ends, so a finished output folder holds no trace of it.

Locking needs a local (POSIX) filesystem; an output on gs:// / s3:// is not locked (logged).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time

from pipeline import remote
from pipeline.errors import OutputLocked
from schemas.layout import LOCK

_LOG = logging.getLogger("longctx")


def _describe(info: dict) -> str:
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)) if started else "?"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {when}"


def _read_info(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, ValueError):
        return {}


class OutputLock:
    """``with OutputLock(out):`` holds the output folder for this run; raises OutputLocked."""

    def __init__(self, out: str):
        self.out = out
        self.path = None if remote.is_remote(out) else os.path.join(out, LOCK)
        self.fd: int | None = None
        self.created = False  # the folder did not exist: removed again if the run left it empty

    def __enter__(self) -> OutputLock:
        if self.path is None:
            _LOG.info("--output %s is not on a local filesystem: not locked", self.out)
            return self
        self.created = not os.path.exists(self.out)
        os.makedirs(self.out, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _read_info(fd)
                os.close(fd)
                raise OutputLocked(
                    f"--output {self.out}: another run is writing it ({_describe(info)}); "
                    f"wait for it to finish (lock file {self.path})"
                ) from None
            # The holder before us may have removed the file between our open and our flock:
            # then we hold a lock on a file nobody else can see. Retry on the file now there.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = _read_info(fd)
        if stale:
            _LOG.warning(
                "took over the lock of a run that ended without releasing it (%s)",
                _describe(stale),
            )
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # while still holding the lock: see the samestat check above
        os.close(self.fd)
        self.fd = None
        if self.created:
            with contextlib.suppress(OSError):
                os.rmdir(self.out)  # only succeeds when empty: a refused first run
