"""The human report in ``OUT/report/``: summary.md and token-length histograms (PNG).

Made on the driver from documents.arrow, the shard stats and the rejects, after the pipeline.
"""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from pipeline.output import write_bytes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def _plots(docs: pa.Table, sample_tokens: np.ndarray, seq_len: int) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    fig, ax = plt.subplots(figsize=(7, 4))
    kinds = docs.column("kind").to_pylist()
    lengths = np.asarray(docs.column("n_tokens"), dtype=np.float64)
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

    fig, ax = plt.subplots(figsize=(7, 4))
    if len(sample_tokens):
        ax.hist(sample_tokens / seq_len, bins=np.linspace(0, 1, 41))
    ax.set_xlabel("sample fill (tokens / seq_len)")
    ax.set_ylabel("samples")
    ax.set_title("Sample fill")
    fig.tight_layout()
    out["sample_fill.png"] = _png(fig)
    plt.close(fig)
    return out


def write_report(
    report_dir: str,
    *,
    manifest: dict,
    docs: pa.Table,
    sample_tokens: np.ndarray,
    rejects: list[dict],
) -> None:
    seq_len = manifest["seq_len"]
    for name, data in _plots(docs, sample_tokens, seq_len).items():
        write_bytes(FileSystems.join(report_dir, name), data)
    c = manifest["counts"]
    lines = [
        "# longctx report",
        "",
        f"- seq_len {seq_len}, overlap {manifest['overlap']}, tokenizer `{manifest['tokenizer']['name']}`",
        f"- documents: {c['documents']}; tokens in documents: {c['document_tokens']:,}",
        f"- samples: {c['samples']} (lower bound {manifest['lower_bound_samples']}); "
        f"tokens in samples: {c['tokens']:,}; fill rate {manifest['fill_rate']:.4f}",
        f"- rejected inputs: {c['rejects']}",
        "",
        "## Documents by kind",
        "",
        "| kind | documents | tokens | median tokens | longest | longer than seq_len |",
        "|---|---|---|---|---|---|",
    ]
    kinds = docs.column("kind").to_pylist()
    lengths = np.asarray(docs.column("n_tokens"), dtype=np.int64)
    for kind in sorted(set(kinds)):
        sel = lengths[np.array([k == kind for k in kinds])]
        lines.append(
            f"| {kind} | {len(sel)} | {int(sel.sum()):,} | {int(np.median(sel)):,} | "
            f"{int(sel.max()):,} | {int((sel > seq_len).sum())} |"
        )
    lines += ["", "## Rejects by reason", "", "| reason | count | example |", "|---|---|---|"]
    by_reason = Counter(r["reason"] for r in rejects)
    for reason, n in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
        example = next(r["path"] for r in rejects if r["reason"] == reason)
        lines.append(f"| {reason} | {n} | `{example}` |")
    lines += ["", "![document lengths](doc_lengths.png)", "", "![sample fill](sample_fill.png)", ""]
    write_bytes(FileSystems.join(report_dir, "summary.md"), "\n".join(lines).encode("utf-8"))
