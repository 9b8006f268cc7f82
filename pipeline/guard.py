"""Guards that keep a run from publishing a worse dataset (exit statuses in ``errors.py``).

Before anything is written:
- every input path named by a flag must exist and yield something usable: a book, a file of
  readable source text, a record with text in ``--text-field``. A missing mount, an empty folder,
  a folder of binaries or a JSONL file whose text sits under another key stops the run (exit 3)
  with a message naming the flag, the path and what was found there. Probes read files in path
  order only until the first usable one, so a good input costs one file read. Inputs on gs:// /
  s3:// are only checked to exist.
- the output's filesystem must have room for about :data:`BYTES_PER_INPUT_BYTE` times the input
  size (exit 6).

After the pipeline, before the previous output is touched:
- a run that produced no document or no sample is refused (exit 3);
- an ``--incremental`` run whose documents or tokens fall below ``--shrink-threshold`` (default
  0.5) of the last manifest's is refused unless ``--allow-shrink`` (exit 4): the signature of a
  half-mounted input.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections import Counter

from pipeline import remote
from pipeline.errors import NoSpace, ShrinkRefused, UnusableInput
from transforms.inputs.archives import ARCHIVE_SUFFIXES
from transforms.inputs.reading import BOOK_SUFFIXES, ReadSettings, probe_books
from transforms.inputs.records import probe_records
from transforms.inputs.repository import probe_repository

# Output bytes per byte of input text: the token store and the shards each hold every token as
# int32 (4 B), and a byte-level BPE spends a token on about 3 bytes of English or code or more
# (Qwen3 on the shared books: 4.1), so 2 x 4/3. The --incremental cache adds one more copy.
BYTES_PER_INPUT_BYTE = 8 / 3
CACHE_BYTES_PER_INPUT_BYTE = 4 / 3
SPACE_MARGIN = 4 * 2**20  # report (~0.3 MiB of PNGs), documents table, Arrow framing
MIB = 2**20


def _reasons(seen: Counter, skip=("files", "book_files")) -> str:
    parts = [f"{reason}: {n}" for reason, n in seen.most_common() if reason not in skip]
    return f" ({', '.join(parts)})" if parts else ""


def _books_problem(path: str, limits: ReadSettings, _lc) -> str | None:
    usable, seen = probe_books(path, limits)
    if usable:
        return None
    if not os.path.isdir(path):
        return f"not a readable book{_reasons(seen)}"
    if not seen["files"]:
        return f"an empty folder{_reasons(seen)}"
    if not seen["book_files"]:
        kinds = ", ".join(BOOK_SUFFIXES)
        return f"no book files ({kinds}) among its {seen['files']} files{_reasons(seen)}"
    n = seen["book_files"]
    return f"{n} book file{'s' if n != 1 else ''}, none readable{_reasons(seen)}"


def _repo_problem(path: str, limits: ReadSettings, _lc) -> str | None:
    usable, seen = probe_repository(path, limits)
    if usable:
        return None
    if not seen["files"]:
        return f"no files in it{_reasons(seen)}"
    return f"no readable text file among its {seen['files']} files{_reasons(seen)}"


def _repos_root_problem(root: str, limits: ReadSettings, _lc) -> str | None:
    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: e.name)
    repos = [
        e.path
        for e in entries
        if e.is_dir(follow_symlinks=False)
        or (e.is_file(follow_symlinks=False) and e.name.lower().endswith(ARCHIVE_SUFFIXES))
    ]
    if not repos:
        what = "an empty folder" if not entries else f"{len(entries)} entries, none a repository"
        return f"no repositories in it ({what}; repositories are folders or .zip/.tar.gz)"
    seen: Counter = Counter()
    for repo in repos:
        usable, found = probe_repository(repo, limits)
        if usable:
            return None
        seen += found
    return (
        f"{len(repos)} repositories, none with a readable text file among their "
        f"{seen['files']} files{_reasons(seen)}"
    )


def _records_problem(path: str, limits: ReadSettings, lc) -> str | None:
    usable, found = probe_records(path, limits)
    return None if usable else found


def _hf_problem(spec: str, limits: ReadSettings, _lc) -> str | None:
    from pipeline.hf_input import HFInputError, probe

    try:
        return probe(spec, limits.text_field)
    except HFInputError as err:
        return str(err).split(": ", 1)[-1]


PROBES = (
    ("--books", "books", _books_problem),
    ("--repos", "repos", _repo_problem),
    ("--repos-root", "repos_root", _repos_root_problem),
    ("--documents", "documents", _records_problem),
    ("--hf-dataset", "hf_dataset", _hf_problem),
)


def check_inputs(lc, limits: ReadSettings) -> None:
    """Raise :class:`UnusableInput` for the first input path that yields nothing usable."""
    for flag, attr, probe in PROBES:
        for path in getattr(lc, attr):
            if flag == "--hf-dataset":  # a folder, a data file or a Hub id: the probe decides
                problem = probe(path, limits, lc)
                if problem:
                    raise UnusableInput(f"{flag} {path}: {problem}")
                continue
            if remote.is_remote(path):
                if not remote.exists(path):
                    raise UnusableInput(f"{flag} {path}: nothing there (or no filesystem for it)")
                continue
            if not os.path.lexists(path):
                raise UnusableInput(
                    f"{flag} {path}: no such file or folder (is its filesystem mounted?)"
                )
            try:
                problem = probe(path, limits, lc)
            except OSError as err:
                problem = f"unreadable ({err.strerror or err})"
            if problem:
                raise UnusableInput(f"{flag} {path}: {problem}")


def input_bytes(paths) -> int:
    """Bytes of the regular files under local ``paths`` (files or folders; links not
    followed; remote paths count 0)."""
    total = 0
    for path in paths:
        if remote.is_remote(path):
            continue
        if os.path.isfile(path) and not os.path.islink(path):
            total += os.path.getsize(path)
            continue
        for folder, _, names in os.walk(path):
            for name in names:
                try:
                    st = os.lstat(os.path.join(folder, name))
                except OSError:
                    continue
                if not stat.S_ISLNK(st.st_mode):
                    total += st.st_size
    return total


def needed_bytes(n_input: int, *, seq_len: int, overlap: int, incremental: bool) -> int:
    """Estimated peak disk use of a run over ``n_input`` bytes of input."""
    per_byte = BYTES_PER_INPUT_BYTE * (1 + overlap / seq_len)
    if incremental:
        per_byte += CACHE_BYTES_PER_INPUT_BYTE
    return int(n_input * per_byte) + SPACE_MARGIN


def free_bytes(out: str) -> int:
    """Free bytes on the filesystem that holds (or will hold) the folder ``out``."""
    path = os.path.abspath(out)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def check_free_space(
    out: str, n_input: int, *, seq_len: int, overlap: int, incremental: bool
) -> None:
    """Raise :class:`NoSpace` when ``out`` is local and its filesystem lacks the room for a run
    over ``n_input`` bytes of input (:func:`input_bytes`)."""
    if remote.is_remote(out):
        return
    need = needed_bytes(n_input, seq_len=seq_len, overlap=overlap, incremental=incremental)
    free = free_bytes(out)
    if free < need:
        raise NoSpace(
            f"--output {out}: about {need / MIB:,.0f} MiB needed for {n_input / MIB:,.0f} MiB "
            f"of input, {free / MIB:,.0f} MiB free there; free some space or choose another "
            "--output (--skip-space-check runs anyway)"
        )


def is_no_space(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it, or a worker error re-raised as text) is ENOSPC."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        text = str(err)
        if "No space left on device" in text or "[Errno 28]" in text:
            return True
        err = err.__cause__ or err.__context__
    return False


def check_result(counts: dict, previous: dict | None, lc) -> None:
    """Refuse a finished run that would publish a worse dataset (see the module docstring);
    ``counts`` and ``previous`` are the new manifest's counts and the last manifest."""
    if not counts["documents"] or not counts["samples"]:
        why = ", ".join(f"{r}: {n}" for r, n in counts["rejects_by_reason"].items()) or "no inputs"
        raise UnusableInput(
            f"the inputs yielded no usable document ({counts['rejects']} rejected inputs: "
            f"{why}); nothing was published"
        )
    if previous is None or not lc.incremental or lc.allow_shrink:
        return
    old_counts = previous.get("counts", {})
    for key, label in (("documents", "documents"), ("document_tokens", "tokens")):
        old, new = int(old_counts.get(key) or 0), int(counts[key])
        if old and new < lc.shrink_threshold * old:
            raise ShrinkRefused(
                f"--incremental: the new dataset would have {new:,} {label}, {new / old:.0%} of "
                f"the last run's {old:,} (below --shrink-threshold {lc.shrink_threshold:g}); an "
                f"input may be missing or half-mounted. {lc.output} is left as it was; pass "
                "--allow-shrink if the inputs really shrank"
            )
