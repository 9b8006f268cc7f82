"""The report's PNG plots (matplotlib), drawn in helper processes while the pipeline runs.

Importing matplotlib and drawing four figures costs about 1.3 s of one core per run. A
:class:`PlotRenderer` made at the start of a run starts one helper process (plain Python:
numpy, pyarrow and matplotlib, no Beam) that imports matplotlib while the driver builds and
runs the pipeline; when the data is there it forks processes that draw their share of the
plots in parallel. If the helper cannot be started or fails, or a share's process does, the
plots it did not draw are drawn in the driver: the output is the same.

The data is there before the run ends: the plan step writes it to the staging folder
(:data:`~schemas.layout.PLOT_DATA`, :func:`plot_data`) as soon as the whole-corpus plan is made,
and a thread of the driver (:meth:`PlotRenderer.watch`, a local staging folder only) hands it to
the helper, so the plots are drawn while the segments are cut and the shards written (on 16
cores the report waited ~0.5 s for them after the run). At the end :meth:`PlotRenderer.render`
takes the helper's plots only if what they were drawn from equals what the run wrote
(documents.arrow's plot columns, the samples' token counts); otherwise it draws them itself.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import signal
import subprocess
import sys
import threading

import numpy as np
import pyarrow as pa

from pipeline.errors import exit_now
from schemas.columns import DOCUMENT_SCHEMA
from schemas.layout import REPORT_PLOTS
from transforms.code.dependency_score import MIN_TOKENS

PLOTS = REPORT_PLOTS  # the PNG files of report/ (names in schemas/layout.py)
# One size for every plot, so that report.html's two-column grid lines them up; at 110 dpi a
# plot is 660 x 440 px, shown at ~80% in a column of the 1,100 px page.
FIGSIZE = (6.0, 4.0)
TOP_SOURCES = 25  # tokens_per_source: the largest documents shown one by one
KIND_COLORS = {"book": "tab:blue", "code": "tab:orange"}
OTHER_COLOR = "tab:gray"
# From this many cores the helpers have cores of their own while the run goes on: one helper
# per plot, each warmed up (a first figure drawn) before the data arrives
MANY_CORES = 8
# The columns of documents.arrow the plots read (figure()): all they are drawn from, with the
# samples' token counts and --seq-len
PLOT_COLUMNS = ("doc_id", "kind", "n_tokens", "dependency_score")
_PLOT_SCHEMA = pa.schema([DOCUMENT_SCHEMA.field(name) for name in PLOT_COLUMNS])
_SAMPLE_TOKENS = b"sample_tokens"  # PLOT_DATA's metadata key: int64 counts, native order
WATCH_INTERVAL_S = 0.02


def plot_data(doc_ids, kinds, n_tokens, scores, sample_tokens) -> bytes:
    """The bytes of :data:`~schemas.layout.PLOT_DATA`: an Arrow IPC stream of the kept
    documents' :data:`PLOT_COLUMNS` (one sequence each, sorted here by doc_id as documents.arrow
    is), the samples' token counts in its metadata."""
    schema = _PLOT_SCHEMA.with_metadata(
        {_SAMPLE_TOKENS: np.asarray(sample_tokens, dtype=np.int64).tobytes()}
    )
    columns = (doc_ids, kinds, n_tokens, scores)
    table = pa.Table.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(columns, _PLOT_SCHEMA, strict=True)],
        schema=schema,
    ).sort_by("doc_id")  # UTF-8 byte order: code point order, as Python's sort of the ids
    return _stream_bytes(table)


def _stream_bytes(table: pa.Table) -> bytes:
    """``table`` as the bytes of one Arrow IPC stream (its schema's metadata kept)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def read_plot_data(data: bytes) -> tuple[pa.Table, np.ndarray]:
    """:func:`plot_data`'s bytes -> (documents' plot columns, the samples' token counts)."""
    table = pa.ipc.open_stream(data).read_all()
    sample_tokens = np.frombuffer(table.schema.metadata[_SAMPLE_TOKENS], dtype=np.int64)
    return table.replace_schema_metadata(None), sample_tokens


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def _count_label(value: float, _pos=None) -> str:
    """A tick of a token count, short enough for a crowded axis: 800, 150K, 1.2M."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.0f}"


def _integer_axis(axis, compact: bool = False) -> None:
    """Counts get whole-number ticks only (never 0.2 documents); token counts (``compact``)
    at most 6 ticks written 150K, 1.2M so that they never run into each other."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    axis.set_major_locator(MaxNLocator(nbins=5 if compact else "auto", integer=True))
    if compact:
        axis.set_major_formatter(FuncFormatter(_count_label))


def _legend_room(ax) -> None:
    """Headroom above the highest bar, so that the legend in a top corner covers none."""
    ax.set_ylim(0, max(ax.get_ylim()[1], 1) * 1.3)


def _short(label: str, width: int = 34) -> str:
    """A long document id shortened in the middle, so that the bars keep their room."""
    return label if len(label) <= width else label[: width - 13] + "..." + label[-10:]


def _doc_lengths(plt, kinds: list[str], lengths: np.ndarray, seq_len: int):
    fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
    if len(lengths):
        low = 10 ** np.floor(np.log10(max(lengths.min(), 1)))
        bins = np.logspace(np.log10(low), np.log10(max(lengths.max(), seq_len) * 1.1), 40)
        for kind in sorted(set(kinds)):
            sel = np.array([k == kind for k in kinds])
            color = KIND_COLORS.get(kind, OTHER_COLOR)
            ax.hist(lengths[sel], bins=bins, alpha=0.6, color=color, label=f"{kind} ({sel.sum()})")
        ax.set_xscale("log")
    ax.axvline(seq_len, color="k", linestyle="--", label=f"--seq-len {seq_len:,}")
    _legend_room(ax)
    _integer_axis(ax.yaxis)
    ax.set_xlabel("document length (tokens, log scale)")
    ax.set_ylabel("documents")
    ax.set_title("Document lengths by kind")
    ax.legend()
    return fig


def _sample_fill(plt, sample_tokens: np.ndarray, seq_len: int):
    fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
    if len(sample_tokens):
        ax.hist(sample_tokens / seq_len, bins=np.linspace(0, 1, 41))
    _integer_axis(ax.yaxis)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("sample fill (tokens / seq_len)")
    ax.set_ylabel("samples")
    ax.set_title(f"Sample fill ({len(sample_tokens):,} samples)")
    return fig


def _tokens_per_source(plt, ids: list[str], kinds: list[str], lengths: np.ndarray):
    """The TOP_SOURCES largest documents, the rest summed in one gray bar."""
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
    order = np.argsort(-lengths, kind="stable")[:TOP_SOURCES] if len(lengths) else []
    labels = [_short(ids[i]) for i in order]
    values = [lengths[i] for i in order]
    colors = [KIND_COLORS.get(kinds[i], OTHER_COLOR) for i in order]
    if len(lengths) > TOP_SOURCES:
        labels.append(f"{len(lengths) - TOP_SOURCES} others")
        values.append(lengths.sum() - sum(values))
        colors.append(OTHER_COLOR)
    ax.barh(labels[::-1], values[::-1], color=colors[::-1], height=0.7)
    _integer_axis(ax.xaxis, compact=True)
    ax.tick_params(axis="y", labelsize=7 if len(labels) > 12 else 9)
    ax.set_xlabel("tokens")
    shown = min(len(lengths), TOP_SOURCES)
    ax.set_title(
        f"Tokens per document ({shown} largest)" if len(lengths) > shown else "Tokens per document"
    )
    handles = [Patch(color=KIND_COLORS[k], label=k) for k in KIND_COLORS if k in kinds]
    if OTHER_COLOR in colors:
        handles.append(Patch(color=OTHER_COLOR, label="others"))
    if handles:
        ax.legend(handles=handles, loc="lower right")
    return fig


def _dependency_scores(plt, kinds: list[str], scores: list):
    fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
    for kind in sorted(set(kinds)):
        vals = [s for s, k in zip(scores, kinds, strict=True) if k == kind and s is not None]
        if vals:
            color = KIND_COLORS.get(kind, OTHER_COLOR)
            ax.hist(vals, bins=30, alpha=0.6, color=color, label=f"{kind} ({len(vals)} scored)")
    _integer_axis(ax.yaxis)
    ax.set_xlabel("long-dependency score (near minus far reuse of rare tokens)")
    ax.set_ylabel("documents")
    ax.set_title("Dependency score by kind")
    if any(s is not None for s in scores):
        ax.axvline(0, color="k", linewidth=0.8)
        _legend_room(ax)
        ax.legend()
    else:
        ax.set_xlim(-1, 1)
        ax.text(
            0.5,
            0.5,
            f"no document is long enough to score\n(>= {MIN_TOKENS:,} tokens)",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="0.35",
        )
    return fig


def figure(name: str, docs: pa.Table, sample_tokens: np.ndarray, seq_len: int):
    """The matplotlib figure of the plot ``name`` (one of :data:`PLOTS`); close it after use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = docs.column("kind").to_pylist()
    lengths = np.asarray(docs.column("n_tokens"), dtype=np.float64)
    if name == "doc_lengths.png":
        return _doc_lengths(plt, kinds, lengths, seq_len)
    if name == "sample_fill.png":
        return _sample_fill(plt, sample_tokens, seq_len)
    if name == "tokens_per_source.png":
        return _tokens_per_source(plt, docs.column("doc_id").to_pylist(), kinds, lengths)
    if name == "dependency_scores.png":
        return _dependency_scores(plt, kinds, docs.column("dependency_score").to_pylist())
    raise ValueError(f"unknown plot {name!r}; the plots are {', '.join(PLOTS)}")


def plots(
    docs: pa.Table, sample_tokens: np.ndarray, seq_len: int, names: tuple[str, ...] = PLOTS
) -> dict[str, bytes]:
    """The PNG bytes of the plots ``names`` (same data, same bytes)."""
    import matplotlib.pyplot as plt

    out = {}
    for name in names:
        fig = figure(name, docs, sample_tokens, seq_len)
        out[name] = _png(fig)
        plt.close(fig)
    return out


def helper_count(cores: int) -> int:
    """Processes that draw the plots on a machine of ``cores`` cores: one per plot where the
    cores are many (the run waits for the slowest at its end: two plots each took ~0.5 s
    more), two on a small machine."""
    return len(PLOTS) if cores >= MANY_CORES else 2


class PlotRenderer:
    """Draws :data:`PLOTS` in ``workers`` processes (0: in this process; None: as many as
    :func:`helper_count` gives for this machine). One helper process imports matplotlib while
    the run goes on (and draws a first figure where ``warm_up``; None: on :data:`MANY_CORES`
    cores or more, on 2 it cost the run 2% in an A/B); when the data is there it forks the
    ``workers`` drawers, which share what it imported. One helper per plot, each importing
    matplotlib, cost ~3 s of CPU each on 16 busy cores (session 14's rows: 11.8 s for four).
    The helper and its drawers are one process group: :meth:`close` stops them all.
    """

    WAIT_S = 300  # the longest render() waits for the helper before drawing here

    def __init__(self, workers: int | None = None, warm_up: bool | None = None):
        cores = os.cpu_count() or 1
        if workers is None:
            workers = helper_count(cores)
        if warm_up is None:
            warm_up = cores >= MANY_CORES
        self.shares = [PLOTS[i::workers] for i in range(min(workers, len(PLOTS)))]
        self.drawers: list[int] = []  # after render(): the pids of the helper's drawers
        self.early = False  # after render(): the helper's plots came from the plan step's data
        self.proc: subprocess.Popen | None = None
        self._sent: tuple | None = None  # what the helper was given to draw, before render()
        self._watching: tuple[threading.Thread, threading.Event] | None = None
        if self.shares:
            command = [sys.executable, "-m", "pipeline.plots", *(["--warm-up"] if warm_up else [])]
            try:
                self.proc = subprocess.Popen(
                    command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    process_group=0,  # with its drawers: stopped whole by close()
                )
            except OSError:  # drawn here
                self.proc = None

    def _send(self, docs: pa.Table, sample_tokens: np.ndarray, seq_len: int) -> bool:
        """Give the helper the data (once; the documents as one Arrow stream). The write waits
        while the helper is still importing matplotlib (a task over the pipe's 64 KB)."""
        if self.proc is None or self._sent is not None:
            return False
        docs = docs.select(list(PLOT_COLUMNS))
        task = pickle.dumps((_stream_bytes(docs), sample_tokens, seq_len, self.shares))
        self._sent = (docs, np.sort(np.asarray(sample_tokens, dtype=np.int64)), seq_len)
        try:
            self.proc.stdin.write(task)
            self.proc.stdin.close()
        except (OSError, ValueError):  # the helper is gone (or stopped): render() draws here
            return False
        return True

    def watch(self, path: str, seq_len: int) -> None:
        """Until :meth:`render`, look for the plan step's :func:`plot_data` at the local
        ``path`` (every :data:`WATCH_INTERVAL_S`) and give it to the helper once there."""
        if self.proc is None or self._watching is not None:
            return
        stop = threading.Event()

        def look() -> None:
            while not stop.wait(WATCH_INTERVAL_S):
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except FileNotFoundError:
                    continue
                # not usable: the plots wait for render()
                with contextlib.suppress(Exception):
                    self._send(*read_plot_data(data), seq_len)
                return

        thread = threading.Thread(target=look, name="longctx-plots", daemon=True)
        self._watching = (thread, stop)
        thread.start()

    def _stop_watching(self, timeout: float | None = None) -> bool:
        """Stop the watch; whether its thread has ended (within ``timeout``)."""
        if self._watching is None:
            return True
        thread, stop = self._watching
        stop.set()
        thread.join(timeout)
        return not thread.is_alive()

    def render(self, docs: pa.Table, sample_tokens: np.ndarray, seq_len: int) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        try:
            if self._stop_watching(self.WAIT_S) and self.proc is not None:
                early = self._sent is not None
                if early and not self._same(docs, sample_tokens, seq_len):
                    self.close()  # drawn from other data: drawn here, not waited for
                elif early or self._send(docs, sample_tokens, seq_len):
                    self.proc.stdin = None  # sent and closed: communicate() only reads
                    data, _ = self.proc.communicate(timeout=self.WAIT_S)
                    pngs, self.drawers = pickle.loads(data)
                    out.update(pngs)
                    self.early = early
        except Exception:  # the helper died: draw what is missing here
            pass
        finally:
            self.close()
        missing = tuple(n for n in PLOTS if n not in out)
        if missing:
            out.update(plots(docs, sample_tokens, seq_len, missing))
        return {n: out[n] for n in PLOTS}

    def _same(self, docs: pa.Table, sample_tokens: np.ndarray, seq_len: int) -> bool:
        """Whether what the helper was given is what the plots are of (the plan step's data
        against the run's files: the same documents, sample token counts and length)."""
        sent_docs, sent_tokens, sent_len = self._sent
        try:
            return (
                sent_len == seq_len
                and np.array_equal(sent_tokens, np.sort(np.asarray(sample_tokens, dtype=np.int64)))
                and sent_docs.equals(docs.select(list(PLOT_COLUMNS)).cast(sent_docs.schema))
            )
        except (KeyError, ValueError, pa.ArrowException):  # another table: not the same
            return False

    def close(self) -> None:
        """Stop the helper and its drawers (a write to it in the watch then fails), then the
        watch."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self._stop_watching()
        self.proc = None


def _draw_forked(payload: bytes, sample_tokens, seq_len: int, shares) -> tuple[dict, list[int]]:
    """Each share of plots drawn in a process forked from this one, all at once: (the PNGs of
    the drawers that finished, their pids). A share whose drawer could not be forked or failed
    is left out: the run draws it."""
    children = []
    for names in shares:
        r, w = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(r)
            os.close(w)
            continue
        if pid == 0:  # the drawer: one share, then out without any teardown
            code = 1
            try:
                os.close(r)
                docs = pa.ipc.open_stream(payload).read_all()
                with os.fdopen(w, "wb") as f:
                    f.write(pickle.dumps(plots(docs, sample_tokens, seq_len, names)))
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        children.append((pid, r))
    out: dict[str, bytes] = {}
    drawers = []
    for pid, r in children:
        with os.fdopen(r, "rb") as f:
            data = f.read()
        _, status = os.waitpid(pid, 0)
        if status == 0:
            out.update(pickle.loads(data))
            drawers.append(pid)
    return out, drawers


def _warm_up() -> None:
    """Draw and encode one throwaway figure with what the plots use (constrained layout, a log
    axis, a histogram, a legend, labels, PNG at the plots' dpi): matplotlib's first figure
    costs ~0.3 s more than the next (fonts, renderer), paid here before the data arrives."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
    ax.hist([1.0, 10.0, 100.0], bins=np.logspace(0, 2, 4), label="warm-up")
    ax.set_xscale("log")
    ax.axvline(10.0, linestyle="--", label="x")
    ax.legend()
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    _png(fig)
    plt.close(fig)


def _prime_arrow() -> None:
    """pyarrow imports pandas (where installed) at the first conversion of a column to numpy
    or Python: ~0.3 s, which the first plot paid after the data had arrived."""
    np.asarray(pa.chunked_array([[1]]))


def _worker(warm_up: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401  (the slow import, done before the data arrives)

    _prime_arrow()
    if warm_up:
        _warm_up()
    payload, sample_tokens, seq_len, shares = pickle.loads(sys.stdin.buffer.read())
    sys.stdout.buffer.write(pickle.dumps(_draw_forked(payload, sample_tokens, seq_len, shares)))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    _worker(warm_up="--warm-up" in sys.argv[1:])
    exit_now(0)  # the run waits for this process's end: no teardown of matplotlib
