"""The conveniences around the pipeline, run as a user runs them: count_tokens, --config,
--quiet / --log-level, the report (plots and HTML), and Hugging Face interop."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import time

import pyarrow as pa
import pytest

from pipeline.plots import PLOTS as PLOT_FILES
from tests.conftest import BOOKS as SHARED_BOOKS
from tests.conftest import STDLIB, run_cli

pytestmark = pytest.mark.slow
BOOKS = ("kafka-metamorphosis.txt", "shelley-frankenstein.txt", "wells-the-time-machine.txt")


@pytest.fixture(scope="module")
def small_books(tmp_path_factory, books_dir):
    root = tmp_path_factory.mktemp("books")
    for b in BOOKS:
        shutil.copy(books_dir / b, root / b)
    return root


@pytest.fixture(scope="module")
def pipeline_out(tmp_path_factory, small_books, qwen3_dir):
    out = tmp_path_factory.mktemp("run") / "out"
    proc = run_cli(
        "pipeline.run",
        "--runner",
        "DirectRunner",
        "--books",
        small_books,
        "--repos",
        STDLIB / "json",
        "--tokenizer",
        qwen3_dir,
        "--seq-len",
        "16384",
        "--no-dedup",
        "--output",
        out,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _docs(out):
    return pa.ipc.open_stream((out / "documents.arrow").read_bytes()).read_all().to_pylist()


def test_count_tokens_counts_exactly_what_the_pipeline_tokenizes(
    pipeline_out, small_books, qwen3_dir
):
    proc = run_cli(
        "pipeline.count_tokens",
        small_books,
        STDLIB / "json",
        "--tokenizer",
        qwen3_dir,
        "--seq-len",
        "16384",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    by_input = {r["path"]: r for r in report["inputs"]}
    docs = _docs(pipeline_out)
    book_tokens = sum(d["n_tokens"] for d in docs if d["kind"] == "book")
    code_tokens = sum(d["n_tokens"] for d in docs if d["kind"] == "code")
    assert by_input[str(small_books)]["read_as"] == "books"
    assert by_input[str(small_books)]["tokens"] == book_tokens
    assert by_input[str(small_books)]["documents"] == 3
    assert by_input[str(STDLIB / "json")]["read_as"] == "repo"
    assert by_input[str(STDLIB / "json")]["tokens"] == code_tokens
    assert report["total"]["tokens"] == book_tokens + code_tokens
    assert report["total"]["documents_longer_than_seq_len"] == sum(
        d["n_tokens"] > 16384 for d in docs
    )
    m = json.loads((pipeline_out / "manifest.json").read_text())
    assert report["total"]["samples"] >= m["counts"]["samples"]  # each input packed alone
    table = run_cli("pipeline.count_tokens", small_books, "--tokenizer", qwen3_dir)
    assert table.returncode == 0 and "total" in table.stdout and "tokens/s" in table.stdout


def test_count_tokens_bad_path_and_tokenizer_exit_2(tmp_path):
    assert run_cli("pipeline.count_tokens", tmp_path / "nope").returncode == 2
    proc = run_cli("pipeline.count_tokens", tmp_path, "--tokenizer", tmp_path / "no.json")
    assert proc.returncode == 2 and "--tokenizer" in proc.stderr


def test_config_file_with_flag_overrides(tmp_path, small_books, qwen3_dir):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"books: [{small_books}]\ntokenizer: {qwen3_dir}\nseq-len: 8192\nformat: parquet\n"
        "dedup: false\nrunner: DirectRunner\n"
    )
    out = tmp_path / "out"
    proc = run_cli(
        "pipeline.run", "--config", cfg, "--seq-len", "16384", "--output", out, "--quiet"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # --quiet: the one summary line and nothing else, on either stream
    assert proc.stdout.startswith(f"Wrote {out}/") and len(proc.stdout.splitlines()) == 1
    assert proc.stderr == "", proc.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["seq_len"] == 16384  # the flag wins over the file
    assert m["config"]["format"] == "parquet" and m["config"]["dedup"] is False
    assert m["config"]["config"] == str(cfg)
    bad = tmp_path / "bad.yaml"
    bad.write_text("seq_lenn: 5\n")
    proc = run_cli("pipeline.run", "--config", bad, "--output", tmp_path / "o2")
    assert proc.returncode == 2 and "unknown option 'seq_lenn'" in proc.stderr


def test_example_configs_parse(tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.config_file import expand_config
    from pipeline.options import LongctxOptions
    from tests.conftest import REPO

    for cfg in sorted((REPO / "configs" / "pipeline").glob("*.yaml")):
        first = cfg.read_text().splitlines()[0]
        assert first.startswith("# python -m pipeline.run --config"), cfg
        argv = expand_config(["--config", str(cfg)])
        opts = PipelineOptions(argv).view_as(LongctxOptions)
        assert opts.seq_len in (65536, 131072)
        # outputs, like inputs, are relative to the YAML file: <repo>/out/..., git-ignored
        assert os.path.normpath(opts.output).startswith(str(REPO / "out") + os.sep), opts.output


PROBE = (  # appended to a copy of report.html: the laid-out box of every plot, read by --dump-dom
    "<script>addEventListener('load',()=>document.body.setAttribute('data-boxes',"
    "JSON.stringify([...document.images].map(i=>{const r=i.getBoundingClientRect();"
    "return [r.left,r.top,r.width,r.height]}))))</script>"
)


def _chromium(*args: str) -> subprocess.CompletedProcess:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (.ci/run installs Debian's chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    return subprocess.run(
        [chromium, *flags, "--window-size=1000,1600", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_shows_paths_relative_to_the_inputs(pipeline_out, small_books, qwen3_dir):
    """No absolute path of this machine in the report; rejects.jsonl keeps them (a contract)."""
    from pipeline.shown_paths import input_roots, shown_path

    report = pipeline_out / "report"
    page, summary = (report / "report.html").read_text(), (report / "summary.md").read_text()
    for text in (page, summary):
        for machine_path in (small_books, STDLIB, qwen3_dir, pipeline_out):
            assert str(machine_path) not in text
        assert f"inputs: --books {small_books.name}; --repos json" in text
        assert "tokenizer qwen3 (151,669 ids)" in text
    rejects = [json.loads(x) for x in (pipeline_out / "rejects.jsonl").read_text().splitlines()]
    roots = input_roots(json.loads((pipeline_out / "manifest.json").read_text())["config"])
    for r in rejects:  # the table's example of each reason, shown from the input's name on
        assert r["path"].startswith("/")
        if r["path"] == next(x["path"] for x in rejects if x["reason"] == r["reason"]):
            shown = shown_path(r["path"], roots)
            assert shown.split("/")[0] in (small_books.name, "json") and f"`{shown}`" in summary
    assert shown_path(str(STDLIB / "json" / "__pycache__"), roots) == "json/__pycache__"
    assert shown_path(f"{small_books}/{BOOKS[0]}", roots) == f"{small_books.name}/{BOOKS[0]}"
    assert shown_path("/elsewhere/x.zip!a/b.py", ["/elsewhere/x.zip"]) == "x.zip!a/b.py"


def test_plots_have_integer_count_ticks_and_titles_inside(pipeline_out):
    """Counts get whole-number ticks; every title and tick label lies inside its figure, also
    with 30 documents of long names (tokens_per_source)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from pipeline.plots import PLOTS, figure

    docs = pa.ipc.open_stream((pipeline_out / "documents.arrow").read_bytes()).read_all()
    many = pa.table(
        {
            "doc_id": [f"code/a-rather-long-repository-name-number-{i:02d}" for i in range(30)],
            "kind": ["code", "book"] * 15,
            "n_tokens": [1000 * (i + 1) ** 2 for i in range(30)],
            "dependency_score": [None] * 30,
        }
    )
    count_axes = {"doc_lengths.png": "y", "sample_fill.png": "y", "tokens_per_source.png": "x"}
    count_axes["dependency_scores.png"] = "y"
    for table in (docs, many):
        for name in PLOTS:
            fig = figure(name, table, np.array([16000, 9000, 16384, 3]), 16384)
            fig.canvas.draw()
            ax, box = fig.axes[0], fig.bbox
            axis = ax.yaxis if count_axes[name] == "y" else ax.xaxis
            lo, hi = ax.get_ylim() if count_axes[name] == "y" else ax.get_xlim()
            ticks = [t for t in axis.get_majorticklocs() if lo <= t <= hi]
            assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), (name, ticks)
            drawn = ax.get_tightbbox(fig.canvas.get_renderer())  # title, labels, ticks, legend
            assert ax.title.get_text() and drawn.x0 >= box.x0 and drawn.y0 >= box.y0, name
            assert drawn.x1 <= box.x1 and drawn.y1 <= box.y1, (name, drawn, box)
            plt.close(fig)


def test_report_html_two_plots_per_row_in_chromium(pipeline_out, tmp_path):
    report = pipeline_out / "report"
    for png in ("doc_lengths.png", "sample_fill.png", "tokens_per_source.png"):
        data = (report / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    page = (report / "report.html").read_text()
    assert "<table>" in page and "doc_lengths.png" in page and "code/json" not in page[:100]
    summary = (report / "summary.md").read_text()
    assert "related packing" in summary and "dependency order" in summary
    copy = tmp_path / "report"
    shutil.copytree(report, copy)
    (copy / "probe.html").write_text(page + PROBE)
    dom = _chromium("--dump-dom", (copy / "probe.html").as_uri()).stdout
    boxes = json.loads(html.unescape(re.search(r'data-boxes="([^"]*)"', dom)[1]))
    assert len(boxes) == 4
    (l0, t0, w0, h0), (l1, t1, w1, h1), (l2, t2, _, _), (l3, t3, _, _) = boxes
    assert t0 == t1 and t2 == t3 and t2 >= t0 + h0  # two rows of two
    assert l0 == l2 and l1 == l3 and l1 >= l0 + w0 and l1 + w1 <= 1000  # two columns, in view
    assert w0 == w1 and w0 > 400 and abs(h0 / w0 - 440 / 660) < 0.01  # unclipped, not squeezed
    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", (report / "report.html").as_uri())
    import numpy as np
    from PIL import Image

    page_img = Image.open(shot).convert("L")
    img = np.asarray(page_img, dtype=np.float32)
    assert img.shape[0] >= 1000 and img.std() > 20  # text, tables and plots, not a blank page
    assert 0.01 < (img < 128).mean() < 0.5
    for (left, top, width, height), png in zip(boxes, PLOT_FILES, strict=True):
        # each plot is drawn whole where the layout put it: the screenshot there is the PNG
        box = (round(left) + 1, round(top) + 1, round(left + width) - 1, round(top + height) - 1)
        shown = np.asarray(page_img.crop(box), dtype=np.float32)
        size = (box[2] - box[0], box[3] - box[1])
        want = np.asarray(Image.open(report / png).convert("L").resize(size), dtype=np.float32)
        assert np.abs(shown - want).mean() < 8, png


def test_output_loads_with_datasets_load_dataset(pipeline_out):
    import datasets

    ds = datasets.load_dataset(
        "arrow", data_files=str(pipeline_out / "shards" / "*.arrow"), split="train"
    )
    m = json.loads((pipeline_out / "manifest.json").read_text())
    assert len(ds) == m["counts"]["samples"]
    assert sum(ds["n_tokens"]) == m["counts"]["tokens"]


def test_plots_from_helper_processes_equal_plots_drawn_here(pipeline_out):
    """The report's PNGs come from one helper process started with the run, which forks a
    drawer per share of the plots (matplotlib imported once, not once per share); a helper
    that died is replaced by drawing in the driver, with the same bytes."""
    import numpy as np

    from pipeline.plots import PLOTS, PlotRenderer, plots

    docs = pa.ipc.open_stream((pipeline_out / "documents.arrow").read_bytes()).read_all()
    fill = np.array([16000, 9000, 16384])
    here = plots(docs, fill, 16384)
    two = PlotRenderer(workers=2)
    assert two.render(docs, fill, 16384) == here and len(set(two.drawers)) == 2
    one_each = PlotRenderer(workers=len(PLOTS), warm_up=True)  # a machine of 8 cores or more
    helper = one_each.proc.pid
    assert one_each.render(docs, fill, 16384) == here
    assert len(set(one_each.drawers)) == len(PLOTS) and helper not in one_each.drawers
    dead = PlotRenderer()
    dead.proc.kill()
    dead.proc.wait()
    assert dead.render(docs, fill, 16384) == here and sorted(here) == sorted(PLOTS)
    # the run's own report holds the same plots (same documents, the run's sample lengths)
    assert (pipeline_out / "report" / "doc_lengths.png").read_bytes() == here["doc_lengths.png"]


def test_plots_drawn_from_the_plan_steps_data_are_taken_only_if_it_is_the_runs(
    pipeline_out, tmp_path
):
    """The plan step writes what the plots are drawn from (PLOT_DATA) as soon as the plan is
    made; the renderer's watch hands it to the helper, which draws while the run goes on. At
    the end its plots are taken only where that data equals the run's files: a different
    sample count (or anything else) is drawn again from the run's own data."""
    import numpy as np

    from pipeline.plots import PLOT_COLUMNS, PlotRenderer, plot_data, plots

    docs = pa.ipc.open_stream((pipeline_out / "documents.arrow").read_bytes()).read_all()
    columns = [docs.column(c).to_pylist()[::-1] for c in PLOT_COLUMNS]  # sorted by plot_data
    fill = np.array([16000, 9000, 16384])
    path = tmp_path / "plots.arrow"
    path.write_bytes(plot_data(*columns, fill[::-1]))
    same = PlotRenderer(workers=2)
    same.watch(str(path), 16384)
    deadline = time.monotonic() + 60
    while same._sent is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert same._sent is not None  # handed over before render() was called
    assert same.render(docs, fill, 16384) == plots(docs, fill, 16384) and same.early
    other = PlotRenderer(workers=2)
    other.watch(str(path), 16384)
    while other._sent is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert other._sent is not None
    more = np.array([16000, 9000, 16384, 12])
    assert other.render(docs, more, 16384) == plots(docs, more, 16384) and not other.early
    assert other.drawers == []  # the helper's plots of the other data were not taken


def test_a_plot_drawer_that_fails_leaves_its_share_to_the_driver(pipeline_out):
    """A drawer forked by the plot helper that fails gives nothing for its share (its exit
    status says so), and the others' plots still come back."""
    import numpy as np

    from pipeline.plots import _draw_forked, plots

    payload = (pipeline_out / "documents.arrow").read_bytes()
    docs = pa.ipc.open_stream(payload).read_all()
    fill = np.array([16000, 9000])
    shares = [("doc_lengths.png",), ("no_such_plot.png",), ("sample_fill.png",)]
    out, drawers = _draw_forked(payload, fill, 16384, shares)
    assert out == plots(docs, fill, 16384, ("doc_lengths.png", "sample_fill.png"))
    assert len(set(drawers)) == 2 and os.getpid() not in drawers


def test_count_tokens_reads_a_books_folder_with_a_catalogue_as_books(tmp_path, qwen3_dir):
    """The shared books folder holds MANIFEST.tsv beside the books: still books, not code."""
    books = tmp_path / "books"
    books.mkdir()
    for name in ("kafka-metamorphosis.txt", "MANIFEST.tsv"):
        shutil.copy(SHARED_BOOKS / name, books / name)
    proc = run_cli("pipeline.count_tokens", books, "--tokenizer", qwen3_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)["inputs"]
    assert row["read_as"] == "books" and row["documents"] == 1
