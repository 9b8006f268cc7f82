"""The human report in ``OUT/report/``: summary.md, report.html (the same on one page) and
PNG plots: document lengths per kind, sample fill, tokens per source, dependency scores.

Made on the driver from documents.arrow, the shard stats and the rejects, after the pipeline.
Paths are shown relative to the input they came from (``pipeline/shown_paths.py``), never as
the machine's absolute paths; rejects.jsonl keeps the full ones. report.html shows the plots
two per row on a page of at most 1,100 px (checked in Chromium by tests/test_cli_tools.py).
"""

from __future__ import annotations

import html
from collections import Counter

import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from pipeline.output import write_bytes
from pipeline.plots import PLOTS as PLOT_FILES
from pipeline.plots import PlotRenderer
from pipeline.shown_paths import input_roots, shown_path, shown_tokenizer
from schemas.layout import REJECTS, REPORT_HTML, SUMMARY_MD


def validation_shortfall(manifest: dict) -> str | None:
    """Why ``--eval-fraction`` above 0 gave no validation split (a document is held out whole,
    and never the only one), or None."""
    fraction = (manifest.get("config") or {}).get("eval_fraction") or 0
    if fraction <= 0 or manifest.get("validation_doc_ids"):
        return None
    n = manifest["counts"]["documents"]
    return (
        f"--eval-fraction {fraction} held out no document: documents are held out whole and "
        f"never all of them, and this run accepted {n} (a book or a repository is one)"
    )


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _html_table(header: list[str], rows: list[list], path_column: int | None = None) -> str:
    """An HTML table; the cells of ``path_column`` in monospace, wrapped anywhere."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='path'>{html.escape(str(c))}</td>"
            if i == path_column
            else f"<td>{html.escape(str(c))}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


PLOTS = list(
    zip(
        ("document lengths", "sample fill", "tokens per source", "dependency scores"),
        PLOT_FILES,
        strict=True,
    )
)
STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:1.5em auto;padding:0 16px;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
    "text-align:left}td.path{font-family:monospace;word-break:break-all}"
    ".plots{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:16px}"
    ".plots img{width:100%;height:auto;display:block;border:1px solid #eee}"
)
KIND_HEADER = [
    "kind",
    "documents",
    "tokens",
    "median tokens",
    "longest",
    "longer than seq_len",
    "median dependency score (scored)",
]


def write_report(
    report_dir: str,
    *,
    manifest: dict,
    docs: pa.Table,
    sample_tokens: np.ndarray,
    rejects: list[dict],
    plotter: PlotRenderer | None = None,
) -> None:
    """report/: the PNG plots, summary.md and report.html (the same facts on one page)."""
    seq_len = manifest["seq_len"]
    pngs = (plotter or PlotRenderer(workers=0)).render(docs, sample_tokens, seq_len)
    for name, data in pngs.items():
        write_bytes(FileSystems.join(report_dir, name), data)
    facts = _facts(manifest)
    kind_rows = _kind_rows(docs, seq_len)
    reject_rows = _reject_rows(rejects, input_roots(manifest.get("config") or {}))
    write_bytes(
        FileSystems.join(report_dir, SUMMARY_MD),
        _markdown(facts, kind_rows, reject_rows).encode("utf-8"),
    )
    write_bytes(
        FileSystems.join(report_dir, REPORT_HTML),
        _html(facts, kind_rows, reject_rows).encode("utf-8"),
    )


def _facts(manifest: dict) -> list[str]:
    c, seq_len, tok = manifest["counts"], manifest["seq_len"], manifest["tokenizer"]
    facts = [
        f"seq_len {seq_len:,}, overlap {manifest['overlap']}, tokenizer "
        f"{shown_tokenizer(tok['name'])} ({tok['vocab_size']:,} ids)",
        _inputs_fact(manifest.get("config") or {}),
        f"documents: {c['documents']}; tokens in documents: {c['document_tokens']:,}",
        f"samples: {c['samples']} (lower bound {manifest['lower_bound_samples']}); "
        f"tokens in samples: {c['tokens']:,}; fill rate {manifest['fill_rate']:.4f}",
        f"rejected inputs: {c['rejects']} ({REJECTS} lists each with its full path)",
    ]
    validation = (c.get("splits") or {}).get("validation")
    if validation:
        facts.append(
            f"validation split: {len(manifest.get('validation_doc_ids') or [])} documents held "
            f"out whole, {validation['samples']} samples, {validation['tokens']:,} tokens"
        )
    shortfall = validation_shortfall(manifest)
    if shortfall:
        facts.append(f"validation split: none: {shortfall}")
    packing = manifest.get("packing") or {}
    if packing:
        facts.append(
            f"related packing: {packing['samples_one_source']:.1%} of samples hold one source, "
            f"{packing['samples_one_kind_language']:.1%} one kind and language"
        )
    dep = manifest.get("dependency_order") or {}
    if dep:
        facts.append(
            f"repository dependency order: {dep['edges']} import edges resolved, "
            f"{dep['files_on_cycles']} files on import cycles, "
            f"{dep['unparsed_source_files']} files read by the fallback parser"
        )
    if manifest.get("mixture"):
        mix = manifest["mixture"]
        facts.append(
            "mixture: asked "
            + ", ".join(f"{k} {v:.0%}" for k, v in mix["requested"].items())
            + "; reached "
            + ", ".join(f"{k} {v:.1%}" for k, v in mix["achieved"].items())
            + f"; {mix['documents_left_out']} documents left out"
        )
    return facts


def _inputs_fact(config: dict) -> str:
    """The inputs by name: the paths below are relative to the folder that holds each."""
    named = [
        f"--{key.replace('_', '-')} " + ", ".join(shown_path(p, []) for p in config.get(key) or [])
        for key in ("books", "repos", "repos_root", "documents", "hf_dataset")
        if config.get(key)
    ]
    if config.get("demo_corpus"):
        named.append("the demo corpus (standard-library packages)")
    return "inputs: " + ("; ".join(named) or "none") + " (paths are shown from these names on)"


def _kind_rows(docs: pa.Table, seq_len: int) -> list[list]:
    kinds = docs.column("kind").to_pylist()
    lengths = np.asarray(docs.column("n_tokens"), dtype=np.int64)
    scores = docs.column("dependency_score").to_pylist()
    rows = []
    for kind in sorted(set(kinds)):
        mask = np.array([k == kind for k in kinds])
        sel = lengths[mask]
        sc = [s for s, m in zip(scores, mask.tolist(), strict=True) if m and s is not None]
        rows.append(
            [
                kind,
                len(sel),
                f"{int(sel.sum()):,}",
                f"{int(np.median(sel)):,}",
                f"{int(sel.max()):,}",
                int((sel > seq_len).sum()),
                f"{np.median(sc):.4f} ({len(sc)})" if sc else "-",
            ]
        )
    return rows


def _reject_rows(rejects: list[dict], roots: list[str]) -> list[list]:
    """Per reason: the count and the first rejected path, relative to its input."""
    by_reason = Counter(r["reason"] for r in rejects)
    return [
        [reason, n, shown_path(next(r["path"] for r in rejects if r["reason"] == reason), roots)]
        for reason, n in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


def _markdown(facts, kind_rows, reject_rows) -> str:
    lines = ["# longctx report", "", *[f"- {f}" for f in facts], "", "## Documents by kind", ""]
    lines += _md_table(KIND_HEADER, kind_rows)
    lines += ["", "## Rejects by reason", ""]
    lines += _md_table(
        ["reason", "count", "example"], [[a, b, f"`{e}`"] for a, b, e in reject_rows]
    )
    lines += [""] + [f"![{alt}]({png})\n" for alt, png in PLOTS]
    return "\n".join(lines)


def _html(facts, kind_rows, reject_rows) -> str:
    page = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>longctx report</title>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>longctx report</h1><ul>",
        *[f"<li>{html.escape(f)}</li>" for f in facts],
        "</ul><h2>Documents by kind</h2>",
        _html_table(KIND_HEADER, kind_rows),
        "<h2>Plots</h2><div class='plots'>",
        *[f"<img src='{png}' alt='{alt}' width='660' height='440'>" for alt, png in PLOTS],
        "</div><h2>Rejects by reason</h2>",
        _html_table(["reason", "count", "example"], reject_rows, path_column=2),
        "</body></html>",
    ]
    return "\n".join(page)
