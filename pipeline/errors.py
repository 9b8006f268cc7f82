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
