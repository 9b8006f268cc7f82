"""``--tokenizer`` checked in a helper process started with the run, beside the driver's start.

The driver needs the tokenizer only to refuse a bad ``--tokenizer`` up front and to describe it
in the manifest; the workers load their own. Parsing a tokenizer.json takes ~0.5 s and holds
the GIL (a thread does not overlap it with the driver's work), and it sat on the driver's path
to the first read: ``pipeline.run`` now starts :class:`TokenizerProbe` as soon as the flags are
checked, so it runs beside the driver's Beam import, and ``prepare`` takes its answer. The
answer is what ``LoadedTokenizer.describe()`` gives, or the ``TokenizerError`` message. If the
helper cannot run or fails for any other reason, the driver loads the tokenizer itself, as
before: same answer, same error. Where the run has a head start (``pipeline/head_start.py``),
which loads the same tokenizer first thing, that helper gives the answer (:func:`check`) and
no process of its own is started (on 16 busy cores one cost 2.4 s of CPU).

Run as ``python -m pipeline.tokenizer_probe SPEC TRUST``: the helper (prints one JSON line).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future

from pipeline.errors import exit_now, interrupt_ends_at_once

NO_SPEC = "-"  # argv for "no --tokenizer given": the bundled tokenizer (the pool's too)
# check()'s answers have exactly one of these keys (pipeline/head_start.py tells them apart
# from its own messages by them)
ANSWER_KEYS = frozenset({"tokenizer", "error", "failed"})


MIN_CORES = 4  # below this the helper's own start costs more than it saves


class TokenizerProbe:
    """``load_tokenizer(spec, trust_remote_code)`` in a helper process, started now; on a
    machine of fewer than :data:`MIN_CORES` cores in a thread of this process, as before (on
    2 cores the helper competed with the driver and the workers for the cores: a 2-worker run
    took 1.05x as long with it)."""

    def __init__(
        self,
        spec: str | None,
        trust_remote_code: bool = False,
        cores: int | None = None,
        answer: Callable[[], dict] | None = None,
    ):
        """``answer``: gives the answer of a helper the run starts anyway (the head start's
        :meth:`~pipeline.head_start.HeadStart.tokenizer_answer`; ``{}`` where it has none),
        instead of a process of the probe's own."""
        self.spec, self.trust_remote_code = spec, trust_remote_code
        self._proc: subprocess.Popen | None = None
        self._here: Future | None = None
        self._answer = answer
        if answer is not None:
            return
        if ((os.cpu_count() or 1) if cores is None else cores) >= MIN_CORES:
            command = [sys.executable, "-m", __name__, spec or NO_SPEC, str(int(trust_remote_code))]
            with contextlib.suppress(OSError):  # its stderr is the run's: a Hub download shows
                self._proc = subprocess.Popen(command, stdout=subprocess.PIPE)
        if self._proc is None:  # in a thread of this process, beside the listing of the inputs
            self._here = Future()
            threading.Thread(target=self._load, name="longctx-tokenizer", daemon=True).start()

    def _load(self) -> None:
        from transforms.samples.tokenize import load_tokenizer

        try:
            self._here.set_result(load_tokenizer(self.spec, self.trust_remote_code).describe())
        except BaseException as err:  # noqa: BLE001 (raised where the answer is asked for)
            self._here.set_exception(err)

    def description(self) -> dict:
        """``LoadedTokenizer.describe()``; raises :class:`TokenizerError` for a bad tokenizer."""
        from transforms.samples.tokenize import TokenizerError, load_tokenizer

        if self._here is not None:
            return self._here.result()
        answer: dict = {}
        if self._answer is not None:
            answer = self._answer()
        elif self._proc is not None:
            out, _ = self._proc.communicate()
            lines = out.decode("utf-8", "replace").strip().splitlines()
            if self._proc.returncode == 0 and lines:
                answer = json.loads(lines[-1])
        if "error" in answer:
            raise TokenizerError(answer["error"])
        if "tokenizer" in answer:
            return answer["tokenizer"]
        # the helper could not answer, or failed otherwise (a network error, say): load here,
        # where the same failure is raised as it always was
        return load_tokenizer(self.spec, self.trust_remote_code).describe()

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def check(spec: str | None, trust_remote_code: bool):
    """``(answer, tokenizer)``: the probe's answer (``{"tokenizer": description}``, ``{"error":
    TokenizerError message}`` or ``{"failed": ...}``, after which the driver loads it itself)
    and the loaded tokenizer (None where it failed)."""
    from transforms.samples.tokenize import TokenizerError, load_tokenizer

    try:
        tok = load_tokenizer(spec, trust_remote_code)
    except TokenizerError as err:
        return {"error": str(err)}, None
    except Exception as err:  # noqa: BLE001 (the driver loads it again and raises it there)
        return {"failed": f"{type(err).__name__}: {err}"}, None
    return {"tokenizer": tok.describe()}, tok


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in ("0", "1"):
        sys.exit("usage: python -m pipeline.tokenizer_probe SPEC 0|1 (pipeline.run starts it)")
    spec = None if sys.argv[1] == NO_SPEC else sys.argv[1]
    with interrupt_ends_at_once():  # Ctrl-C at the run's start: the run reports it, once
        answer = check(spec, sys.argv[2] == "1")[0]
    print(json.dumps(answer))
    exit_now(0)  # the driver waits for this process's end: no teardown of the tokenizer
