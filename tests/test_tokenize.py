"""Tokenization with the real Qwen3 tokenizer."""

import os

import numpy as np
import pytest

from transforms.documents import BOOK, CODE, TextDocument
from transforms.inputs.reading import ReadSettings, read_book
from transforms.samples.tokenize import TokenizerError, chunk_text, encode_document, load_tokenizer


def test_end_of_text_is_endoftext_not_chat_eos(qwen3):
    assert qwen3.end_of_text == "<|endoftext|>" and qwen3.end_of_text_id == 151643
    assert qwen3.vocab_size == 151669


def test_bundled_tokenizer_is_qwen3(qwen3):
    bundled = load_tokenizer(None)
    assert bundled.sha256 == qwen3.sha256 and bundled.name == "bundled:qwen3"


def test_chunked_encoding_equals_whole_encoding_on_a_real_book(books_dir, qwen3):
    doc = read_book(str(books_dir / "melville-moby-dick.txt"), "book/moby", ReadSettings())
    assert len(chunk_text(doc.texts[0])) > 10
    ids = encode_document(doc, qwen3)
    assert ids.dtype == np.int32 and ids[-1] == qwen3.end_of_text_id
    whole = qwen3.tokenizer.encode(doc.texts[0], add_special_tokens=False).ids
    assert ids[:-1].tolist() == whole
    assert qwen3.tokenizer.decode(ids[:-1].tolist()) == doc.texts[0]


class _CallSizes:
    """The real tokenizer, with the number of texts of each ``encode_batch_fast`` call noted."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, []

    def encode_batch_fast(self, texts, **kw):
        self.calls.append(len(texts))
        return self.tokenizer.encode_batch_fast(texts, **kw)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_many_long_books_are_encoded_a_bounded_group_of_chunks_a_call(books_dir, qwen3):
    """A worker's memory at its peak is the Encodings of one call (~50 bytes a token beside
    the ids): a long document (or a batch of them) goes ENCODE_GROUP chunks a call, never all
    its chunks at once, and the ids are still those of each whole text."""
    import dataclasses

    from transforms.samples.tokenize import ENCODE_GROUP, encode_documents_full

    # the longest book (over ENCODE_GROUP chunks alone) and the two shortest: a third of the
    # books' text, in calls of whole groups and one of the rest with the short ones
    paths = sorted(books_dir.glob("*.txt"), key=lambda p: p.stat().st_size)
    paths = [paths[-1], *paths[:2]]
    docs = [read_book(str(p), f"book/{p.stem}", ReadSettings()) for p in paths]
    chunks = sum(len(chunk_text(d.texts[0])) for d in docs)
    assert chunks > ENCODE_GROUP
    spy = _CallSizes(qwen3.tokenizer)
    encoded = encode_documents_full(docs, dataclasses.replace(qwen3, tokenizer=spy))
    assert max(spy.calls) == ENCODE_GROUP and len(spy.calls) > 1
    whole = qwen3.tokenizer.encode_batch_fast([d.texts[0] for d in docs], add_special_tokens=False)
    for enc, ids in zip(encoded, whole, strict=True):
        assert enc.tokens[:-1].tolist() == ids.ids and enc.tokens[-1] == qwen3.end_of_text_id


def test_a_local_tokenizer_loaded_again_is_not_read_again_unless_its_files_changed(
    tmp_path, qwen3_dir, monkeypatch
):
    """Each worker's tokenize step loads the tokenizer its pool server had loaded: found by
    its files' identity on disk, without reading and hashing the 11 MB again; a file changed
    on disk is read again (and gives a tokenizer of its own)."""
    import json
    import shutil
    from pathlib import Path

    folder = tmp_path / "tok"
    shutil.copytree(qwen3_dir, folder)
    first = load_tokenizer(str(folder))
    reads = []
    read_text = Path.read_text

    def counted(self, *a, **kw):
        reads.append(self.name)
        return read_text(self, *a, **kw)

    monkeypatch.setattr(Path, "read_text", counted)
    assert load_tokenizer(str(folder)) is first
    assert "tokenizer.json" not in reads
    data = json.loads((folder / "tokenizer.json").read_text("utf-8"))
    (folder / "tokenizer.json").write_text(json.dumps(data, indent=1), "utf-8")
    changed = load_tokenizer(str(folder))
    assert changed is not first and changed.sha256 != first.sha256
    assert changed.end_of_text_id == first.end_of_text_id


def test_two_threads_loading_one_tokenizer_at_once_parse_it_once(tmp_path, qwen3_dir, monkeypatch):
    """A Dask worker's warm-up (in its event loop) and the head start's first task on it (in
    its task thread) load the run's tokenizer at the same moment: one parses it, the other
    gets the same object (two parses cost ~1 s of CPU each on a busy 16-core machine)."""
    import shutil
    import threading

    from transforms.samples import tokenize

    folder = tmp_path / "tok"
    shutil.copytree(qwen3_dir, folder)
    parses = []
    from_str = tokenize.Tokenizer.from_str

    def counted(text):
        parses.append(threading.current_thread().name)
        return from_str(text)

    monkeypatch.setattr(tokenize.Tokenizer, "from_str", staticmethod(counted))
    got, go = [], threading.Barrier(2)

    def load():
        go.wait()
        got.append(load_tokenizer(str(folder)))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(parses) == 1 and got[0] is got[1]


_FORK_AFTER_TABLES = """
import os, sys
from transforms.samples.tokenize import load_tokenizer
tok = load_tokenizer(sys.argv[1])
tok.newline_tables()  # as the pool's server and the head start do, before they fork
pid = os.fork()
if pid == 0:
    tok.tokenizer.encode_batch_fast(["a line of text\\n" * 200] * 64)
    print("threads", len(os.listdir("/proc/self/task")), flush=True)  # the pool's, if used
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize("parallelism", ["unset", "true"])
def test_children_forked_after_the_newline_tables_encode_in_parallel(qwen3_dir, parallelism):
    """The review of session 14: built with decode_batch, the tables used the tokenizer's
    thread pool before the fork, so every pooled worker and head-start helper encoded on one
    thread (tokenizers turns its parallelism off in a child forked after it was used), and
    with TOKENIZERS_PARALLELISM=true hung."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    env["RAYON_NUM_THREADS"] = "3"
    if parallelism == "true":
        env["TOKENIZERS_PARALLELISM"] = "true"
    proc = subprocess.run(
        [sys.executable, "-c", _FORK_AFTER_TABLES, str(qwen3_dir)],
        capture_output=True, text=True, env=env, timeout=60,  # a hang fails here
    )  # fmt: skip
    out = proc.stdout.split()
    assert out[0] == "threads" and out[2:] == ["child", "0"], proc.stdout + proc.stderr[-2000:]
    assert int(out[1]) > 1, "the forked child encoded on one thread"


_RSS_AFTER_LOAD = """
import ctypes, sys
from transforms.samples.tokenize import load_tokenizer

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

load_tokenizer(sys.argv[1])
loaded = rss_mb()
ctypes.CDLL(None).malloc_trim(0)
print(round(loaded - rss_mb()))
"""


def test_loading_a_tokenizer_leaves_no_free_heap_to_processes_forked_after_it(qwen3_dir):
    """Parsing Qwen3's tokenizer.json left ~120 MB free but mapped on the C heap, which the
    pool's server and the head start then handed to each of their forked children (~30 at
    16 workers: counted in each one's RSS, and copied as they reused it): load_tokenizer
    gives it back, so a trim after it finds little left."""
    import subprocess
    import sys

    if not hasattr(__import__("ctypes").CDLL(None), "malloc_trim"):
        pytest.skip("not glibc")
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_AFTER_LOAD, str(qwen3_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) < 30  # MB a second trim gives back (120 without)


def test_special_token_text_in_a_file_stays_text(qwen3):
    doc = TextDocument("code/r", CODE, "/r", ["s = '<|endoftext|>'\n"], files=["a.py"], title="r")
    ids = encode_document(doc, qwen3).tolist()
    assert ids.count(qwen3.end_of_text_id) == 1 and ids[-1] == qwen3.end_of_text_id
    assert ids[0] == qwen3.repo_name_id and ids.count(qwen3.file_sep_id) == 1


def test_repository_layout(qwen3):
    doc = TextDocument(
        "code/r", CODE, "/r", ["x = 1\n", "y = 2"], files=["a.py", "b/c.py"], title="r"
    )
    ids = encode_document(doc, qwen3).tolist()
    text = qwen3.tokenizer.decode(ids, skip_special_tokens=False)
    assert (
        text == "<|repo_name|>r\n<|file_sep|>a.py\nx = 1\n<|file_sep|>b/c.py\ny = 2\n<|endoftext|>"
    )


def test_book_gets_exactly_one_end_of_text(qwen3):
    ids = encode_document(TextDocument("book/b", BOOK, "/b", ["Hello.\n"]), qwen3)
    assert ids[-1] == qwen3.end_of_text_id and (ids == qwen3.end_of_text_id).sum() == 1


@pytest.mark.parametrize(
    "spec", ["/no/such/tokenizer.json", "./nope", "definitely not a tokenizer", "tok\0x"]
)
def test_unknown_tokenizer(spec):
    with pytest.raises(TokenizerError, match="--tokenizer"):
        load_tokenizer(spec)


def test_invalid_tokenizer_file(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{}")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        load_tokenizer(str(bad))


def test_a_bos_adding_tokenizer_gets_bos_at_every_document_start(tmp_path, qwen3_dir):
    """Llama 3 / Mistral / Gemma add a BOS token; base models expect it at a document's start.
    A copy of Qwen3 given a BOS post-processor must produce documents that start with it."""
    import json

    import pyarrow as pa
    from tokenizers import Tokenizer, processors

    from tests.conftest import BOOKS, STDLIB, run_cli

    tok = Tokenizer.from_file(str(qwen3_dir / "tokenizer.json"))
    bos = "<|im_start|>"
    bos_id = tok.token_to_id(bos)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, bos_id)]),
        ]
    )
    bos_dir = tmp_path / "bos-tokenizer"
    bos_dir.mkdir()
    tok.save(str(bos_dir / "tokenizer.json"))
    inputs = ["--books", BOOKS / "gilman-the-yellow-wallpaper.txt", "--repos", STDLIB / "json"]
    outs = {}
    for name, spec in (("plain", qwen3_dir), ("bos", bos_dir)):
        out = tmp_path / name
        proc = run_cli(
            "pipeline.run",
            "--runner",
            "DirectRunner",
            *inputs,
            "--tokenizer",
            spec,
            "--seq-len",
            "8192",
            "--output",
            out,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs[name] = out
    manifest = json.loads((outs["bos"] / "manifest.json").read_text())
    assert manifest["tokenizer"]["bos_ids"] == [bos_id] and manifest["tokenizer"]["bos"] == bos
    assert "bos_ids" not in json.loads((outs["plain"] / "manifest.json").read_text())["tokenizer"]

    def docs(out):
        table = pa.ipc.open_stream((out / "documents.arrow").read_bytes()).read_all()
        return {d["doc_id"]: d["n_tokens"] for d in table.to_pylist()}

    plain, with_bos = docs(outs["plain"]), docs(outs["bos"])
    assert with_bos == {d: n + 1 for d, n in plain.items()}  # one BOS per document, counted
    firsts = {}
    for shard in sorted((outs["bos"] / "shards").glob("*.arrow")):
        for row in pa.ipc.open_stream(shard.read_bytes()).read_all().to_pylist():
            pos = 0
            segments = zip(row["doc_ids"], row["doc_starts"], row["seq_lengths"], strict=True)
            for d, start, n in segments:
                if start == 0:
                    firsts[d] = row["input_ids"][pos]
                pos += n
    assert firsts == {d: bos_id for d in plain}
    assert run_cli("pipeline.validate", outs["bos"]).returncode == 0


def test_the_driver_checks_the_tokenizer_in_a_helper_process(qwen3_dir, qwen3, tmp_path):
    """Issue 20: parsing tokenizer.json (~0.5 s, holding the GIL) sat on the driver's path to
    the first read; a helper process started with the run does it. Its answer is the
    tokenizer's own description and its error the same message, and where the helper fails
    the driver loads the tokenizer itself (as it does on fewer than 4 cores)."""
    from pipeline.tokenizer_probe import TokenizerProbe

    probe = TokenizerProbe(str(qwen3_dir), cores=16)
    assert probe._proc is not None and probe.description() == qwen3.describe()
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError) as helper_says:
        TokenizerProbe(str(bad), cores=16).description()
    with pytest.raises(TokenizerError) as here:
        load_tokenizer(str(bad))
    assert str(helper_says.value) == str(here.value)
    broken = TokenizerProbe(str(qwen3_dir), cores=16)
    broken._proc.kill()  # the helper fails: the driver loads it
    assert broken.description() == qwen3.describe()
    here_only = TokenizerProbe(str(qwen3_dir), cores=2)
    assert here_only._proc is None and here_only.description() == qwen3.describe()


def test_the_head_start_answers_the_tokenizer_check_without_a_process_of_its_own(
    qwen3_dir, qwen3, tmp_path
):
    """Where the run has a head start, which loads the tokenizer first thing, its answer is
    the check's: the same description, the same error for a bad tokenizer.json, and no probe
    process (2.4 s of CPU on 16 busy cores); a head start that died gives no answer and the
    driver loads the tokenizer itself."""
    from pipeline.config import BuildConfig
    from pipeline.head_start import HeadStart
    from pipeline.tokenizer_probe import TokenizerProbe

    def probe_of(spec: str) -> TokenizerProbe:
        hs = HeadStart(BuildConfig(tokenizer=spec, output=str(tmp_path / "out")), 1)
        probe = TokenizerProbe(spec, cores=16, answer=hs.tokenizer_answer)
        probe.head_start = hs  # closed by the test
        return probe

    good = probe_of(str(qwen3_dir))
    assert good._proc is None and good._here is None
    try:
        assert good.head_start.tokenizer_answer() == {"tokenizer": qwen3.describe()}
        assert good.description() == qwen3.describe()
    finally:
        good.head_start.close()
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError) as here:
        load_tokenizer(str(bad))
    wrong = probe_of(str(bad))
    try:
        assert wrong.head_start.tokenizer_answer() == {"error": str(here.value)}
        with pytest.raises(TokenizerError) as helper_says:
            wrong.description()
        assert str(helper_says.value) == str(here.value)
    finally:
        wrong.head_start.close()
    dead = probe_of(str(qwen3_dir))
    dead.head_start._proc.kill()  # long before its answer (a parse takes ~0.5 s)
    dead.head_start._proc.wait()
    try:  # its end of file is the answer: none (not a wait of ANSWER_WAIT_S)
        assert dead.head_start.tokenizer_answer(timeout=600) == {}
        assert dead.description() == qwen3.describe()
    finally:
        dead.head_start.close()


def test_the_head_start_answer_is_read_past_other_lines_and_from_any_descriptor(
    qwen3_dir, qwen3, tmp_path
):
    """The driver reads the head start's answer with poll(), not select(), which refuses a
    descriptor of 1,024 or more (a driver embedded in a process that holds many files: the
    run failed with ValueError); a line printed before the answer by something else is passed
    over, not taken for no answer."""
    import resource
    import subprocess
    import sys

    from pipeline.config import BuildConfig
    from pipeline.head_start import HeadStart

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2048), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        hs = HeadStart(BuildConfig(tokenizer=str(qwen3_dir), output=str(tmp_path / "out")), 1)
        try:
            assert hs._proc.stdout.fileno() >= 1024
            assert hs.tokenizer_answer() == {"tokenizer": qwen3.describe()}
        finally:
            hs.close()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    noisy = HeadStart.__new__(HeadStart)
    noisy._proc = subprocess.Popen(
        [sys.executable, "-c", "print('a hook says hello'); print('{\"error\": \"bad\"}')"],
        stdout=subprocess.PIPE,
    )
    try:
        assert noisy._read_answer(60) == {"error": "bad"}
    finally:
        noisy._proc.wait()
        noisy._proc.stdout.close()


def test_ctrl_c_while_the_inputs_are_listed_does_not_wait_for_the_tokenizer(
    qwen3_dir, tmp_path, monkeypatch
):
    """A Ctrl-C during the inputs' listing ends the run's preparation at once: the driver
    waited for the tokenizer's check first (up to a minute where a helper was stuck)."""
    import pipeline.job as job
    from pipeline.tokenizer_probe import TokenizerProbe

    asked = []
    probe = TokenizerProbe(str(qwen3_dir), answer=lambda: asked.append(1) or {})

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "discover_inputs", interrupted)
    argv = ["--runner", "DirectRunner", "--books", str(tmp_path), "--tokenizer", str(qwen3_dir),
            "--output", str(tmp_path / "out")]  # fmt: skip
    (tmp_path / "a.txt").write_text("a book " * 100)
    with pytest.raises(KeyboardInterrupt):
        job.prepare(argv, None, probe, None)
    assert asked == []


def test_a_multi_processing_run_never_parses_the_tokenizer_in_the_driver(qwen3_dir, tmp_path):
    """The whole run on a machine of 16 cores (as the run sees it): the driver's manifest
    describes the tokenizer, and the driver process has parsed none (the head start checked
    it, without a probe process of its own; the pooled workers load their own)."""
    import json

    from tests.conftest import run_patched, two_workers_on_json

    out = tmp_path / "out"
    watch = (
        "import os\nos.cpu_count = lambda: 16\n"
        "import pipeline.tokenizer_probe as tp\n"
        "probes, init = [], tp.TokenizerProbe.__init__\n"
        "def seen(self, *a, **k):\n"
        "    init(self, *a, **k)\n"
        "    probes.append(self._proc is None and self._answer is not None)\n"
        "tp.TokenizerProbe.__init__ = seen\n"
    )
    proc = run_patched(
        watch,
        two_workers_on_json(qwen3_dir, out),
        "import transforms.samples.tokenize as t\nprint(status, len(t._LOADED), probes)",
        timeout=300,
    )
    assert proc.stdout.split()[-3:] == ["0", "0", "[True]"], proc.stdout + proc.stderr
    described = json.loads((out / "manifest.json").read_text())["tokenizer"]
    assert described == load_tokenizer(str(qwen3_dir)).describe()


def test_ctrl_c_inside_a_weakref_callback_ends_a_helper_start_at_once():
    """Python raises Ctrl-C's KeyboardInterrupt wherever the main thread is; inside a weakref
    callback (the import machinery's module locks have one) it cannot propagate: Python
    prints "Exception ignored in ..." and goes on, the interrupt lost (a helper's start did
    so once in CI). Under ``interrupt_ends_at_once`` the process ends at once with 130 and
    prints nothing; without it (the control) the callback's interrupt is lost."""
    import subprocess
    import sys

    from tests.conftest import REPO

    code = (
        "import contextlib, os, signal, sys, time, weakref\n"
        "from pipeline.errors import interrupt_ends_at_once\n"
        "class Held: pass\n"
        "def callback(_):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    end = time.monotonic() + 2\n"
        "    while time.monotonic() < end: pass  # the signal is handled here\n"
        "guard = interrupt_ends_at_once() if sys.argv[1] == '1' else contextlib.nullcontext()\n"
        "with guard:\n"
        "    held = Held(); ref = weakref.ref(held, callback); del held\n"
        "    print('went on')\n"
    )
    run = [sys.executable, "-c", code]
    lost = subprocess.run([*run, "0"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "Exception ignored" in lost.stderr and lost.stdout == "went on\n"
    ended = subprocess.run([*run, "1"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (ended.returncode, ended.stdout, ended.stderr) == (130, "", "")


def _tokenizers_loaded(pid: int) -> bool:
    """Whether the process has loaded the tokenizers library (its main code is running and
    about to parse the tokenizer, ~0.5 s)."""
    with open(f"/proc/{pid}/maps") as f:
        return "tokenizers" in f.read()


@pytest.mark.parametrize("helper", ["pipeline.tokenizer_probe", "pipeline.worker_pool"])
def test_ctrl_c_while_a_helper_loads_the_tokenizer_ends_it_without_a_traceback(helper, qwen3_dir):
    """Ctrl-C at a run's start reaches the helpers started with it (the same process group):
    the tokenizer check printed a KeyboardInterrupt traceback of its own under the run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    read_end, write_end = os.pipe()
    args = [str(qwen3_dir), "0"] + (["WARNING", str(write_end)] if "pool" in helper else [])
    proc = subprocess.Popen(
        [sys.executable, "-m", helper, *args],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(write_end,),
    )
    os.close(write_end)
    deadline = time.monotonic() + 30
    while not _tokenizers_loaded(proc.pid):
        assert time.monotonic() < deadline
        time.sleep(0.001)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    os.close(read_end)
    assert err.decode() == ""  # no traceback of its own under the run's
    assert proc.returncode in (130, -signal.SIGINT)  # ended by the interrupt
