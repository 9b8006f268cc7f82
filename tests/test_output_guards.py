"""A run never publishes a worse dataset (issue 16): unusable inputs, a shrinking --incremental
run, two runs on one folder and a full disk each stop with their own exit status and a message,
and leave the previous output byte for byte as it was."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import pyarrow as pa
import pytest

from pipeline import errors, guard
from tests.conftest import BOOKS, REPO, run_cli

pytestmark = pytest.mark.slow

SMALL = BOOKS / "kafka-metamorphosis.txt"
BASE = ["--runner", "DirectRunner", "--seq-len", "4096"]


def tree_sha(folder) -> str:
    """One checksum over every file (hidden ones too) and its path under ``folder``."""
    sha = hashlib.sha256()
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            sha.update(os.path.relpath(path, folder).encode() + b"\0")
            with open(path, "rb") as fh:
                sha.update(fh.read())
    return sha.hexdigest()


@pytest.fixture(scope="module")
def _good_output_once(tmp_path_factory):
    """One finished --incremental output of two books, made once for the module."""
    root = tmp_path_factory.mktemp("good")
    out, books = root / "out", root / "books"
    books.mkdir()
    for name in ("kafka-metamorphosis.txt", "gilman-the-yellow-wallpaper.txt"):
        (books / name).write_bytes((BOOKS / name).read_bytes())
    proc = run_cli("pipeline.run", *BASE, "--books", books, "--output", out, "--incremental")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, books


@pytest.fixture
def good_output(tmp_path, _good_output_once):
    """A private copy of the finished output and its input books, for a test to refuse or
    replace: (output folder, books folder)."""
    out, books = tmp_path / "out", tmp_path / "books"
    shutil.copytree(_good_output_once[0], out, symlinks=True)
    shutil.copytree(_good_output_once[1], books)
    return out, books


def _unusable_cases(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    binaries = tmp_path / "binaries"
    binaries.mkdir()
    (binaries / "blob.bin").write_bytes(os.urandom(4096))
    (binaries / "main.py").write_bytes(b"\x00\x01\x02\x03" * 500)  # a binary with a code name
    records = tmp_path / "docs.jsonl"
    records.write_text(
        "".join(json.dumps({"content": f"document {i} text", "id": i}) + "\n" for i in range(3))
    )
    return {
        "empty books folder": (
            ["--books", empty, "--overwrite"],
            f"--books {empty}: an empty folder",
        ),
        "unmounted repos root": (
            ["--repos-root", tmp_path / "mnt" / "repos", "--incremental"],
            f"--repos-root {tmp_path / 'mnt' / 'repos'}: no such file or folder",
        ),
        "binaries only": (
            ["--repos", binaries, "--overwrite"],
            f"--repos {binaries}: no readable text file among its 2 files (binary: 2)",
        ),
        "jsonl with another text field": (
            ["--documents", records, "--overwrite"],
            "records have fields content, id; no 'text'; use --text-field content",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty books folder",
        "unmounted repos root",
        "binaries only",
        "jsonl with another text field",
    ],
)
def test_unusable_input_is_refused_and_the_output_stays_identical(tmp_path, good_output, case):
    out, _ = good_output
    before = tree_sha(out)
    args, message = _unusable_cases(tmp_path)[case]
    proc = run_cli("pipeline.run", *BASE, "--output", out, *args)
    assert proc.returncode == errors.UNUSABLE_INPUT, proc.stderr[-2000:]
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert tree_sha(out) == before


def test_text_field_reads_the_named_field(tmp_path):
    records = tmp_path / "docs.jsonl"
    records.write_text(json.dumps({"content": "The text lives here.", "id": "a"}) + "\n")
    out = tmp_path / "out"
    proc = run_cli(
        "pipeline.run", *BASE, "--documents", records, "--text-field", "content", "--output", out
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["documents"] == 1 and m["config"]["text_field"] == "content"


def test_documents_kind_sets_the_kind_of_records_without_one(tmp_path):
    records = tmp_path / "code.jsonl"
    rows = [
        {"text": "def f():\n    return 1\n", "id": "a", "path": "a.py"},
        {"text": "Once upon a time.\n", "id": "b", "kind": "book"},
    ]
    records.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    proc = run_cli(
        "pipeline.run", *BASE, "--documents", records, "--documents-kind", "code", "--output", out
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import pyarrow as pa

    docs = pa.ipc.open_stream((out / "documents.arrow").read_bytes()).read_all().to_pylist()
    assert {d["doc_id"]: d["kind"] for d in docs} == {"docs/code/a": "code", "docs/code/b": "book"}


def test_run_that_yields_no_document_is_not_published(tmp_path, good_output):
    """Inputs pass the probe but every document is filtered out: nothing is published."""
    out, _ = good_output
    before = tree_sha(out)
    proc = run_cli(
        "pipeline.run",
        *BASE,
        "--books",
        BOOKS / "tolstoy-war-and-peace.txt",
        "--min-dependency-score",
        "5",
        "--output",
        out,
        "--overwrite",
    )
    assert proc.returncode == errors.UNUSABLE_INPUT, proc.stderr[-2000:]
    assert "yielded no usable document" in proc.stderr
    assert tree_sha(out) == before
    assert not any(n.startswith(".staging") for n in os.listdir(out))
    # into a folder no run had written: the refused run takes its marker away again (review: a
    # marker left by a failed run vouched for files the user put there later)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "notes.txt").write_text("mine\n")
    proc = run_cli(
        "pipeline.run", *BASE, "--books", BOOKS / "melville-moby-dick.txt",
        "--min-dependency-score", "5", "--output", fresh,
    )  # fmt: skip
    assert proc.returncode == errors.UNUSABLE_INPUT, proc.stderr[-2000:]
    assert ".longctx-output" not in os.listdir(fresh) and (fresh / "notes.txt").is_file()


def test_incremental_shrink_is_refused_unless_allowed(good_output):
    out, books = good_output
    before = tree_sha(out)
    (books / "gilman-the-yellow-wallpaper.txt").unlink()  # half the documents vanish
    args = [*BASE, "--books", books, "--output", out, "--incremental"]
    proc = run_cli("pipeline.run", *args, "--shrink-threshold", "0.6")
    assert proc.returncode == errors.SHRINK_REFUSED, proc.stderr[-2000:]
    assert "would have 1 documents, 50% of the last run's 2" in proc.stderr
    assert "--allow-shrink" in proc.stderr
    assert tree_sha(out) == before
    # the default threshold is 0.5: one of two documents is not below it, but the tokens are
    m = json.loads((out / "manifest.json").read_text())
    proc = run_cli("pipeline.run", *args)
    tokens_share = None
    if proc.returncode == errors.SHRINK_REFUSED:
        assert "tokens" in proc.stderr and tree_sha(out) == before
        tokens_share = "below"
    proc = run_cli("pipeline.run", *args, "--allow-shrink")
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = json.loads((out / "manifest.json").read_text())
    assert after["counts"]["documents"] == 1 and m["counts"]["documents"] == 2
    kafka_share = after["counts"]["document_tokens"] / m["counts"]["document_tokens"]
    assert (tokens_share == "below") == (kafka_share < 0.5)


def test_validate_and_launcher_refuse_an_empty_dataset(tmp_path, good_output):
    out, _ = good_output
    empty = tmp_path / "empty-out"
    empty.mkdir()
    for name in ("shards", "report"):
        (empty / name).mkdir()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["counts"].update(documents=0, samples=0, tokens=0, document_tokens=0, shards=0)
    manifest["shards"], manifest["fill_rate"] = [], 0.0
    (empty / "manifest.json").write_text(json.dumps(manifest))
    (empty / "rejects.jsonl").write_text("")
    import pyarrow as pa

    docs = pa.ipc.open_stream((out / "documents.arrow").read_bytes()).read_all().slice(0, 0)
    with (
        pa.OSFile(str(empty / "documents.arrow"), "wb") as fh,
        pa.ipc.new_stream(fh, docs.schema) as writer,
    ):
        writer.write_table(docs)
    proc = run_cli("pipeline.validate", empty)
    assert proc.returncode == 1 and "0 documents" in proc.stdout, proc.stdout


def test_second_run_on_a_locked_output_exits_at_once(tmp_path, good_output):
    out, _ = good_output
    env = dict(os.environ, PYTHONPATH=str(REPO))
    first = subprocess.Popen(
        [sys.executable, "-m", "pipeline.run", *BASE, "--books", BOOKS, "--output", out]
        + ["--overwrite", "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not (out / ".lock").exists():
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.time() < deadline
            time.sleep(0.05)
        second = run_cli("pipeline.run", *BASE, "--books", SMALL, "--output", out, "--overwrite")
        assert first.poll() is None, "the first run ended before the second was refused"
        assert second.returncode == errors.OUTPUT_LOCKED, second.stderr[-2000:]
        assert f"pid {first.pid}" in second.stderr and "started 20" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        assert first.wait(timeout=600) == 0, first.communicate()[1][-2000:]
    finally:
        if first.poll() is None:
            first.kill()
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["documents"] == 14
    assert not (out / ".lock").exists()
    assert run_cli("pipeline.validate", out).returncode == 0


def test_lock_and_staging_of_a_killed_run_are_taken_over(good_output):
    out, books = good_output
    (out / ".lock").write_text(json.dumps({"pid": 999_999, "host": "gone", "started": 1.0}))
    (out / ".staging-999999").mkdir()
    (out / ".staging-999999" / "half.arrow").write_bytes(b"x" * 100)
    proc = run_cli("pipeline.run", *BASE, "--books", books, "--output", out, "--overwrite")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "took over the lock" in proc.stderr and "pid 999999 on gone" in proc.stderr
    # no lock, no staging left: the cache and the output's marker only
    assert sorted(n for n in os.listdir(out) if n.startswith(".")) == [".cache", ".longctx-output"]


_INJECT_ENOSPC = """
import errno, sys
from apache_beam.io.filesystems import FileSystems
real_create = FileSystems.create

class Full:
    def __init__(self, fh): self.fh, self.n = fh, 0
    def write(self, data):
        self.n += len(data)
        if self.n > 256 * 1024:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.fh.write(data)
    def __getattr__(self, name): return getattr(self.fh, name)
    def __enter__(self): return self
    def __exit__(self, *a): self.fh.close()

def create(path, *a, **k):
    fh = real_create(path, *a, **k)
    return Full(fh) if "/shards/" in path or "/tokens/" in path else fh

FileSystems.create = staticmethod(create)
from pipeline.run import run
sys.exit(run(sys.argv[1:]))
"""


def test_disk_full_while_writing_stops_cleanly(good_output):
    """ENOSPC injected into the shard and token writes (the project's only writers)."""
    out, _ = good_output
    before = tree_sha(out)
    proc = subprocess.run(
        [sys.executable, "-c", _INJECT_ENOSPC, *BASE, "--output", out, "--overwrite"]
        + ["--books", BOOKS / "tolstoy-war-and-peace.txt", "--log-level", "ERROR"],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == errors.NO_SPACE, proc.stderr[-3000:]
    assert "the disk filled up while writing" in proc.stderr
    assert tree_sha(out) == before
    assert not any(n.startswith(".staging") for n in os.listdir(out))


@contextlib.contextmanager
def _small_filesystem(path, mib: int):
    path.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_full_small_filesystem_up_front_and_while_writing(tmp_path):
    with _small_filesystem(tmp_path / "fs", 6) as fs:
        out = fs / "out"
        proc = run_cli("pipeline.run", *BASE, "--books", SMALL, "--output", out)
        assert proc.returncode == 0, proc.stderr[-2000:]
        before = tree_sha(out)
        big = ["--books", BOOKS / "tolstoy-war-and-peace.txt", "--output", out, "--overwrite"]
        proc = run_cli("pipeline.run", *BASE, *big)
        assert proc.returncode == errors.NO_SPACE, proc.stderr[-2000:]
        assert "MiB needed for 3 MiB of input" in proc.stderr and "free there" in proc.stderr
        assert tree_sha(out) == before
        proc = run_cli("pipeline.run", *BASE, *big, "--skip-space-check", "--log-level", "ERROR")
        assert proc.returncode == errors.NO_SPACE, proc.stderr[-2000:]
        assert "the disk filled up while writing" in proc.stderr
        assert tree_sha(out) == before
        assert sorted(os.listdir(out)) == sorted(
            [".longctx-output", "documents.arrow", "manifest.json", "rejects.jsonl", "report",
             "shards"]
        )  # fmt: skip


def test_space_estimate_covers_a_real_run(tmp_path):
    """The up-front estimate is an upper bound of what a run really writes (books + code)."""
    out = tmp_path / "out"
    inputs = [BOOKS / "melville-moby-dick.txt", BOOKS / "austen-pride-and-prejudice.txt"]
    args = [a for p in inputs for a in ("--books", p)]
    proc = run_cli("pipeline.run", *BASE, *args, "--output", out, "--incremental")
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = sum(
        os.path.getsize(os.path.join(r, n)) for r, _, names in os.walk(out) for n in names
    )
    m = json.loads((out / "manifest.json").read_text())
    tokens_twice = 2 * 4 * m["counts"]["tokens"]  # token store + shards, int32
    need = guard.needed_bytes(
        guard.input_bytes(map(str, inputs)), seq_len=4096, overlap=0, incremental=True
    )
    assert written + tokens_twice <= need


def test_files_no_run_wrote_are_never_replaced(tmp_path, good_output):
    """A user's folder that holds a report/, a shards/ and a documents.arrow of their own (a new
    user's bug report: a run deleted report/paper.md and shards/mydata.csv) is refused up
    front, with or without --overwrite, and so is a file of theirs inside an output's shards/;
    nothing changes."""
    proj = tmp_path / "proj"
    (proj / "report").mkdir(parents=True)
    (proj / "shards").mkdir()
    (proj / "report" / "paper.md").write_text("my paper\n")
    (proj / "shards" / "mydata.csv").write_text("a,b\n1,2\n")
    (proj / "documents.arrow").write_bytes(b"not an arrow file")
    (proj / "notes.txt").write_text("kept\n")
    before = tree_sha(proj)
    for extra in ([], ["--overwrite"]):
        proc = run_cli("pipeline.run", *BASE, "--books", SMALL, "--output", proj, *extra)
        assert proc.returncode == errors.USAGE, proc.stderr[-2000:]
        assert "replace shards/, documents.arrow, report/, which" in proc.stderr, proc.stderr
        assert tree_sha(proj) == before
    # --output the same folder as an input: refused, not read back (or left with nothing)
    books_dir = tmp_path / "mybooks"
    books_dir.mkdir()
    shutil.copy(SMALL, books_dir / SMALL.name)
    proc = run_cli("pipeline.run", *BASE, "--books", books_dir, "--output", books_dir)
    assert proc.returncode == errors.USAGE and "the same folder as --books" in proc.stderr
    assert sorted(p.name for p in books_dir.iterdir()) == [SMALL.name]
    out, books = good_output
    (out / "shards" / "mine.csv").write_text("x\n")
    before = tree_sha(out)
    proc = run_cli("pipeline.run", *BASE, "--books", books, "--output", out, "--overwrite")
    assert proc.returncode == errors.USAGE and "shards/mine.csv" in proc.stderr, proc.stderr
    assert tree_sha(out) == before


def test_an_output_inside_an_input_folder_is_not_read_back(tmp_path):
    """A new user's bug report: --books BOOKS --output BOOKS/out1, then another run over BOOKS,
    read the first run's report.html and summary.md as books. Run 1 (--books, the driver lists
    the books) skips its own --output before its marker exists, and keeps the notes.txt that sat
    beside the published names; run 2 (--repos, the workers walk the folder) skips out1 by its
    marker and its own out2, marked before the workers read, and warns that --eval-fraction
    held out nothing from one document."""
    books = tmp_path / "books"
    books.mkdir()
    shutil.copy(SMALL, books / SMALL.name)
    (books / "out1").mkdir()
    (books / "out1" / "notes.txt").write_text("kept\n")
    proc = run_cli("pipeline.run", *BASE, "--books", books, "--output", books / "out1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((books / "out1" / "manifest.json").read_text())
    assert manifest["counts"]["documents"] == 1, manifest["counts"]
    assert (books / "out1" / "notes.txt").read_text() == "kept\n"
    out2 = books / "out2"
    proc = run_cli(
        "pipeline.run", *BASE, "--repos", books, "--output", out2, "--eval-fraction", "0.2"
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    docs = pa.ipc.open_stream((out2 / "documents.arrow").read_bytes()).read_all()
    assert docs.column("files").to_pylist() == [[SMALL.name]]
    rejects = [json.loads(line) for line in (out2 / "rejects.jsonl").open()]
    skipped = [r for r in rejects if r["reason"] == "skipped_dir"]
    assert sorted(r["path"].rsplit("/", 1)[-1] for r in skipped) == ["out1", "out2"], rejects
    assert all("longctx output" in r["detail"] for r in skipped)
    # one document cannot be split: said, not silently ignored (a new user's report)
    assert "warning: --eval-fraction 0.2 held out no document" in proc.stderr, proc.stderr
    assert "validation split: none" in (out2 / "report" / "summary.md").read_text()


def test_what_counts_as_a_runs_own_and_what_as_someone_elses(tmp_path):
    """Review cases, without a run: another tool's manifest.json (a web app's) is no output's and
    is itself listed; a pre-marker run killed while publishing left .staging-* (and .lock),
    which vouch for its files; a symbolic-link shards/ is refused up front (replacing it failed
    half-way, after the previous output was deleted); the marker is written by mark_output
    before anything is staged, once."""
    from pipeline.output import foreign_files, mark_output, prepare_staging
    from schemas.layout import MARKER

    web = tmp_path / "web"
    (web / "report").mkdir(parents=True)
    (web / "report" / "summary.md").write_text("mine\n")
    (web / "manifest.json").write_text('{"name": "my web app", "version": "1.0"}')
    assert foreign_files(str(web)) == ["manifest.json", "report/"]
    killed = tmp_path / "killed"
    (killed / "shards").mkdir(parents=True)
    (killed / "shards" / "train-00000-of-00001.arrow").write_bytes(b"")
    (killed / "documents.arrow").write_bytes(b"")
    assert foreign_files(str(killed)) == ["shards/", "documents.arrow"]
    (killed / ".staging-4242").mkdir()
    assert foreign_files(str(killed)) == []
    linked = tmp_path / "linked"
    linked.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", linked / "shards")
    (linked / MARKER).write_text("")
    assert foreign_files(str(linked)) == ["shards (a symbolic link)"]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert mark_output(str(fresh)) and (fresh / MARKER).is_file()
    assert not mark_output(str(fresh))  # there already: not this call's to remove
    staging = prepare_staging(str(fresh))
    assert os.path.isdir(staging) and (fresh / MARKER).is_file()


def test_an_input_with_some_other_manifest_beside_shards_is_read(tmp_path):
    """Review: a books folder or repository holding another tool's manifest.json beside a
    shards/ folder was skipped whole as a pipeline output (two books lost, or 'no files'); only
    this pipeline's manifest (or the marker) marks an output."""
    from pipeline.discover import discover
    from transforms.inputs.reading import ReadSettings
    from transforms.inputs.repository import read_repository

    lib = tmp_path / "lib"
    (lib / "gutenberg" / "shards").mkdir(parents=True)
    (lib / "gutenberg" / "manifest.json").write_text('{"name": "an extension"}')
    for name in ("kafka-metamorphosis.txt", "gilman-the-yellow-wallpaper.txt"):
        shutil.copy(BOOKS / name, lib / "gutenberg" / "shards" / name)
    sources, rejects = discover(books=[str(lib)])
    assert len(sources) == 2 and not [r for r in rejects if r.reason == "skipped_dir"]
    repo = tmp_path / "ext"
    (repo / "shards").mkdir(parents=True)
    (repo / "manifest.json").write_text('{"manifest_version": 3}')
    (repo / "shards" / "router.py").write_text("import os\n")
    doc, _ = read_repository(str(repo), "code/ext", "ext", ReadSettings())
    assert doc is not None and "shards/router.py" in doc.files
    (lib / "gutenberg" / "manifest.json").write_text('{"pipeline": {"name": "longctx"}}')
    sources, rejects = discover(books=[str(lib)])
    assert sources == [] and [r.reason for r in rejects] == ["skipped_dir"]


def test_what_a_killed_publish_left_is_the_pipelines_own():
    """A run killed inside publish leaves shards/, report/ and documents.arrow without a
    manifest; the marker (written before staging) says they are a run's: the rerun replaces
    them. Without the marker or a manifest they are someone else's."""
    import tempfile

    from pipeline.output import foreign_files
    from schemas.layout import MARKER

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        os.makedirs(os.path.join(out, "shards"))
        os.makedirs(os.path.join(out, "report"))
        for rel in ("shards/train-00000-of-00001.arrow", "report/summary.md", "documents.arrow"):
            open(os.path.join(out, rel), "wb").close()
        assert foreign_files(out) == ["shards/", "documents.arrow", "report/"]
        open(os.path.join(out, MARKER), "wb").close()
        assert foreign_files(out) == []
        open(os.path.join(out, "report", "paper.md"), "wb").close()
        assert foreign_files(out) == ["report/paper.md"]
