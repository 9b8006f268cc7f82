"""The report's PNG plots (matplotlib), drawn in helper processes while the pipeline runs.

Importing matplotlib and drawing four figures costs about 1.3 s of one core per run. A
:class:`PlotRenderer` made at the start of a run starts helper processes (plain Python: numpy,
pyarrow and matplotlib, no Beam) that import matplotlib while the driver builds and runs the
pipeline, then draw their share of the plots in parallel when the data is there. If a helper
cannot be started or fails, the plots are drawn in the driver: the output is the same.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys

import numpy as np
import pyarrow as pa

PLOTS = ("doc_lengths.png", "sample_fill.png", "tokens_per_source.png", "dependency_scores.png")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def plots(
    docs: pa.Table, sample_tokens: np.ndarray, seq_len: int, names: tuple[str, ...] = PLOTS
) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    kinds = docs.column("kind").to_pylist()
    lengths = np.asarray(docs.column("n_tokens"), dtype=np.float64)
    if "doc_lengths.png" in names:
        fig, ax = plt.subplots(figsize=(7, 4))
        if len(lengths):
            bins = np.logspace(0, np.log10(max(lengths.max(), seq_len) * 1.1), 40)
            for kind in sorted(set(kinds)):
                sel = np.array([k == kind for k in kinds])
                ax.hist(lengths[sel], bins=bins, alpha=0.6, label=f"{kind} ({sel.sum()})")
            ax.set_xscale("log")
        ax.axvline(seq_len, color="k", linestyle="--", label=f"--seq-len {seq_len}")
        ax.set_xlabel("document length (tokens, log scale)")
        ax.set_ylabel("documents")
        ax.set_title("Document lengths by kind")
        ax.legend()
        fig.tight_layout()
        out["doc_lengths.png"] = _png(fig)
        plt.close(fig)

    if "sample_fill.png" in names:
        fig, ax = plt.subplots(figsize=(7, 4))
        if len(sample_tokens):
            ax.hist(sample_tokens / seq_len, bins=np.linspace(0, 1, 41))
        ax.set_xlabel("sample fill (tokens / seq_len)")
        ax.set_ylabel("samples")
        ax.set_title("Sample fill")
        fig.tight_layout()
        out["sample_fill.png"] = _png(fig)
        plt.close(fig)

    if "tokens_per_source.png" in names:  # the 25 largest documents, the rest summed
        fig, ax = plt.subplots(figsize=(7, 5))
        ids = docs.column("doc_id").to_pylist()
        order = np.argsort(-lengths, kind="stable")[:25] if len(lengths) else []
        labels = [ids[i] for i in order]
        values = [lengths[i] for i in order]
        if len(lengths) > 25:
            labels.append(f"{len(lengths) - 25} others")
            values.append(lengths.sum() - sum(values))
        colors = ["tab:blue" if n.startswith("book/") else "tab:orange" for n in labels]
        ax.barh(labels[::-1], values[::-1], color=colors[::-1])
        ax.set_xlabel("tokens")
        ax.set_title("Tokens per source (blue: books, orange: code and records)")
        ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        out["tokens_per_source.png"] = _png(fig)
        plt.close(fig)

    if "dependency_scores.png" in names:
        fig, ax = plt.subplots(figsize=(7, 4))
        scores = docs.column("dependency_score").to_pylist()
        for kind in sorted(set(kinds)):
            vals = [s for s, k in zip(scores, kinds, strict=True) if k == kind and s is not None]
            if vals:
                ax.hist(vals, bins=30, alpha=0.6, label=f"{kind} ({len(vals)} scored)")
        ax.axvline(0, color="k", linewidth=0.8)
        ax.set_xlabel("long-dependency score (near minus far reuse of rare tokens)")
        ax.set_ylabel("documents")
        ax.set_title("Dependency score by kind (documents >= 45,056 tokens)")
        if any(s is not None for s in scores):
            ax.legend()
        fig.tight_layout()
        out["dependency_scores.png"] = _png(fig)
        plt.close(fig)
    return out


class PlotRenderer:
    """Draws :data:`PLOTS` in ``workers`` helper processes (0: in this process)."""

    def __init__(self, workers: int = 2):
        self.procs: list[subprocess.Popen] = []
        for _ in range(workers):
            try:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "pipeline.plots"],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                    )
                )
            except OSError:
                break

    def render(self, docs: pa.Table, sample_tokens: np.ndarray, seq_len: int) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        try:
            if self.procs:  # the documents go to the helpers as one Arrow stream
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, docs.schema) as writer:
                    writer.write_table(docs)
                payload = sink.getvalue().to_pybytes()
            shares = [PLOTS[i :: len(self.procs)] for i in range(len(self.procs))]
            for proc, names in zip(self.procs, shares, strict=True):
                proc.stdin.write(pickle.dumps((payload, sample_tokens, seq_len, names)))
                proc.stdin.close()
                proc.stdin = None  # communicate() below only reads
            for proc in self.procs:
                data, _ = proc.communicate(timeout=300)
                out.update(pickle.loads(data))
        except Exception:  # a helper died: draw what is missing here
            pass
        finally:
            self.close()
        missing = tuple(n for n in PLOTS if n not in out)
        if missing:
            out.update(plots(docs, sample_tokens, seq_len, missing))
        return {n: out[n] for n in PLOTS}

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.procs = []


def _worker() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401  (the slow import, done before the data arrives)

    payload, sample_tokens, seq_len, names = pickle.loads(sys.stdin.buffer.read())
    docs = pa.ipc.open_stream(payload).read_all()
    sys.stdout.buffer.write(pickle.dumps(plots(docs, sample_tokens, seq_len, names)))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    _worker()
