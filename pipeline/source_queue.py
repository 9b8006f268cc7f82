"""Sources handed to DirectRunner ``multi_processing`` workers one at a time, as each is free.

Beam 2.77's FnApiRunner splits a step's input over its N worker processes once, in fixed
shares, and never rebalances. Fixed shares by size (Graham's LPT rule, until this module) still
left the 16 workers of a 300 MB run ending their read + tokenize stage 4-7 s apart on
nvidia-h200's CPUs: the same bytes cost different time (code against prose, one core against
another), and the stage ends with its slowest worker. Here each worker is given one ticket, and
a ticket's worker takes the next source nobody has taken, largest first, each time it has
finished the last one (list scheduling, as a runner with dynamic work rebalancing does).

A claim is a file named by the source's place in the order, made in one step (a hard link to a
file that holds the ticket), so that no two workers take the same source; the queue's folder
is a local temporary folder of the driver's machine, which every ``multi_processing`` worker
shares (marked as its driver's: a driver killed with SIGKILL leaves it to the next run,
``pipeline/run_folders.py``). A ticket run again (a bundle retried after a failure, whose
outputs Beam discarded) first takes back what it had claimed, so every source is read exactly
once in the outputs.

DaskRunner on a cluster whose workers all see the driver's temporary folder (this machine's,
``pipeline.runners.sees_this_folder``) takes groups of sources the same way (:meth:`SourceQueue.of_groups`): one ticket a partition, each taking one group as it
starts. Dask runs a bag's partitions in the order its graph's priorities set, not by their
index, so fixed groups of equal size left the last group anywhere: on nvidia-h200's 16 cores
the workers' stage ended 2.7-3.4 s apart. With groups that shrink as they go, taken largest
first, 0.23-0.35 s apart, 0.91x and 0.93x the wall time (docs/benchmarks.md, "Session 22").
"""

from __future__ import annotations

import functools
import os
import pickle
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pipeline import run_folders
from transforms.balance import largest_first

GROUPS = "groups.pickle"  # SourceQueue.of_groups: the groups, in the queue's folder
# the queues' folders in the temporary folder: each marked as its driver's, and removed by a
# later run once that driver is gone (a driver killed with SIGKILL removes nothing itself)
PREFIX = "longctx-sources-"


@functools.lru_cache(maxsize=4)
def _groups(folder: str) -> list[list]:
    with open(os.path.join(folder, GROUPS), "rb") as f:
        return pickle.load(f)


@dataclass(frozen=True)
class SourceQueue:
    folder: str  # local, seen by every worker process of the run
    order: tuple[str, ...]  # document ids, largest source first
    tickets: int  # one per worker

    @classmethod
    def create(cls, doc_ids: Sequence[str], sizes: Sequence[int], tickets: int) -> SourceQueue:
        """A queue of ``doc_ids``, largest first (ties, and sizes unknown as 0: as given)."""
        if tickets < 1:
            raise ValueError(f"tickets must be at least 1, got {tickets}")
        if len(doc_ids) != len(sizes):
            raise ValueError("one size per source")
        order = largest_first(sizes)
        folder = run_folders.make(PREFIX)
        return cls(folder, tuple(doc_ids[i] for i in order), tickets)

    @classmethod
    def of_groups(cls, groups: Sequence[Sequence]) -> SourceQueue:
        """A queue of ``groups`` of sources in the order given, one ticket each: ticket k takes
        the next group nobody has taken (DaskRunner on a cluster that sees this folder, one
        partition a ticket, ``pipeline.steps.read.ClaimGroupFn``). The groups are written to
        the queue's folder, where :meth:`group` reads them: the graph carries only the
        tickets."""
        folder = run_folders.make(PREFIX)
        with open(os.path.join(folder, GROUPS), "wb") as f:
            pickle.dump([list(g) for g in groups], f, protocol=pickle.HIGHEST_PROTOCOL)
        return cls(folder, tuple(str(k) for k in range(len(groups))), len(groups))

    def group(self, taken: str) -> list:
        """The sources of the group ``taken`` (a name in :attr:`order`), read from the folder
        once a process."""
        return _groups(self.folder)[int(taken)]

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def claimed(self) -> dict[str, int]:
        """Each claimed source's document id -> the ticket that took it."""
        return {self.order[i]: t for i, t in self._claims().items()}

    def _claims(self) -> dict[int, int]:
        out = {}
        for name in os.listdir(self.folder):
            if name.isdigit():
                with open(os.path.join(self.folder, name)) as f:
                    out[int(name)] = int(f.read())
        return out

    def claims(self, ticket: int) -> Iterator[str]:
        """The document ids ``ticket`` takes, one at a time: first those it took in an earlier
        run of the same ticket, then each source nobody has taken yet, in order. Taken as the
        consumer asks for the next one, so a busy worker leaves the rest to the others."""
        mine = sorted(i for i, t in self._claims().items() if t == ticket)
        yield from (self.order[i] for i in mine)
        token = os.path.join(self.folder, f".ticket-{ticket}-{os.getpid()}")
        with open(token, "w") as f:
            f.write(str(ticket))
        try:
            for i, doc_id in enumerate(self.order):
                path = os.path.join(self.folder, str(i))
                if os.path.exists(path):
                    continue
                try:
                    os.link(token, path)  # the claim appears whole, or not at all
                except FileExistsError:
                    continue  # another worker took it first
                yield doc_id
        finally:
            os.unlink(token)
