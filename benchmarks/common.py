"""Shared pieces of the benchmarks: the corpus, a process-tree memory sampler, the results log.

Benchmarks are run by hand (never in CI); each prints a table and appends it, with machine,
date and commit, to ``docs/benchmarks.md``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LONGCTX_SHARED_DATA", REPO.parent / "shared" / "data"))
BOOKS = SHARED / "books"
QWEN3 = SHARED / "tokenizers" / "qwen3"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
# ~21 MB of text: the 14 books plus these standard-library packages as repositories.
PACKAGES = (
    "asyncio",
    "concurrent",
    "email",
    "http",
    "idlelib",
    "importlib",
    "json",
    "lib2to3",
    "logging",
    "multiprocessing",
    "pydoc_data",
    "tkinter",
    "unittest",
    "xml",
)


def corpus_args(root: Path | None = None) -> list[str]:
    """``--books``/``--repos`` flags of the benchmark corpus (or of a copy under ``root``)."""
    if root is not None:
        return ["--books", str(root / "books"), "--repos-root", str(root / "repos")]
    args = ["--books", str(BOOKS)]
    for pkg in PACKAGES:
        args += ["--repos", str(STDLIB / pkg)]
    return args


def pipeline_cmd(inputs: list[str], seq_len: int, out: Path, *extra: str) -> list[str]:
    """``python -m pipeline.run --runner DirectRunner`` on ``inputs`` with the Qwen3 tokenizer."""
    return [
        sys.executable,
        "-m",
        "pipeline.run",
        "--runner",
        "DirectRunner",
        *inputs,
        "--tokenizer",
        str(QWEN3),
        "--seq-len",
        str(seq_len),
        "--output",
        str(out),
        *extra,
    ]


def corpus_files() -> list[Path]:
    """The text files of the corpus, as the pipeline would read them (for the peers)."""
    files = sorted(p for p in BOOKS.iterdir() if p.suffix in (".txt", ".md"))
    for pkg in PACKAGES:
        files += sorted(
            p for p in (STDLIB / pkg).rglob("*") if p.is_file() and "__pycache__" not in p.parts
        )
    return files


def _tree_rss(pid: int) -> dict[int, int]:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            out[p.pid] = p.memory_info().rss
    return out


class PeakRSS:
    """Samples the RSS of a process tree (and of extra pids) every 0.1 s; keeps the peaks."""

    def __init__(self, pid: int, extra_pids: tuple[int, ...] = ()):
        self.pids = (pid, *extra_pids)
        self.peak_total = 0
        self.peak_each: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            now: dict[int, int] = {}
            for pid in self.pids:
                now.update(_tree_rss(pid))
            self.peak_total = max(self.peak_total, sum(now.values()))
            for pid, rss in now.items():
                self.peak_each[pid] = max(self.peak_each.get(pid, 0), rss)
            time.sleep(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_measured(cmd: list[str], extra_pids: tuple[int, ...] = (), env=None) -> dict:
    """Run a command; wall time, exit status, peak RSS of its tree (+ extra pids)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env or dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with PeakRSS(proc.pid, extra_pids) as mem:
        out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(err[-4000:])
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return {
        "wall_s": wall,
        "peak_rss_mb": mem.peak_total / 2**20,
        "peak_rss_each_mb": sorted((v / 2**20 for v in mem.peak_each.values()), reverse=True),
        "stdout": out,
    }


def machine() -> str:
    cpus = os.cpu_count()
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        mem = "? GiB"
    return f"{platform.machine()} {cpus} cores, {mem}, Python {platform.python_version()}"


def commit() -> str:
    """The checkout's commit, ``-dirty`` where tracked files differ from it (a device machine
    runs a copy of the working tree over the last landed commit: its bare hash would name code
    that was not the code measured)."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "?"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def record(
    title: str,
    command: str,
    body: str,
    *,
    doc: bool = True,
    json_path: Path | None = None,
    data: dict | None = None,
) -> None:
    """Print and append a result section to docs/benchmarks.md (unless ``doc=False``); with
    ``json_path``, also write the section (title, date, commit, machine, command, the markdown
    body and ``data``) to that JSON file, replacing it."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"\n### {title}\n\n{stamp}, commit {commit()}, {machine()}.\n"
        f"Command: `{command}`\n\n{body}\n"
    )
    print(text)
    if doc:
        with open(REPO / "docs" / "benchmarks.md", "a", encoding="utf-8") as fh:
            fh.write(text)
    if json_path is not None:
        write_json_atomic(
            json_path,
            {
                "title": title,
                "date": stamp,
                "commit": commit(),
                "machine": machine(),
                "command": command,
                "markdown": text.strip() + "\n",
                **(data or {}),
            },
        )


def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file (never half-written)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
