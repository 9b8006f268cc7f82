"""Hostile inputs, crashes and reruns: a folder nobody cleaned goes through the real CLI.

Every bad file must become a reject with a reason, every good file next to it must be in the
shards, nothing outside the given root may appear anywhere in the output, a run killed with
SIGKILL leaves no manifest.json, and the rerun equals a clean run byte for byte.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from schemas.validation import validate_output
from tests.conftest import REPO, STDLIB, run_cli

pytestmark = pytest.mark.slow
SECRET = "TOP-SECRET-d41d8cd98f00b204e9800998ecf8427e"
CLEAN_SECONDS: list[float] = []  # wall time of the clean run, to place the kills inside a run


def _good_files() -> dict[str, str]:
    return {
        "pkg/decoder.py": (STDLIB / "json" / "decoder.py").read_text(),
        "pkg/__init__.py": "from .decoder import JSONDecoder\n",
        "web/app.js": "import { x } from './util.js';\nconsole.log(x);\n",
        "web/util.js": "export const x = 'utility module for the app';\n",
        "with space.py": "SPACED_NAME_OK = 1\n",
        "new\nline.py": "NEWLINE_NAME_OK = 2\n",
        "utf16_bom.txt": "UTF16_BOM_OK café",
        "utf16_nobom.txt": "UTF16_NOBOM_OK plain ascii text",
        "latin1.py": "# -*- coding: latin-1 -*-\nLATIN1_OK = 'café'\n",
        "big_but_allowed.py": "BIG_OK = 1\n" + "x = 1\n" * 50_000,
    }


def _make_hostile_root(root: Path) -> Path:
    secret = root / "secret.txt"
    secret.write_text(SECRET + "\n")
    (root / "outside_dir").mkdir()
    (root / "outside_dir" / "leak.py").write_text(f"LEAK = '{SECRET}'\n")
    repos = root / "repos"
    repo = repos / "messy"
    repo.mkdir(parents=True)
    for rel, text in _good_files().items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel == "utf16_bom.txt":
            path.write_bytes(text.encode("utf-16"))
        elif rel == "utf16_nobom.txt":
            path.write_bytes(text.encode("utf-16-le"))
        elif rel == "latin1.py":
            path.write_bytes(text.encode("latin-1"))
        else:
            path.write_text(text)
    deep = repo
    for k in range(60):
        deep = deep / f"d{k}"
    deep.mkdir(parents=True)
    (deep / "deep.py").write_text("DEEP_OK = 60\n")
    (repo / os.fsdecode(b"bad\xffname.py")).write_text("BADBYTES_NAME_OK = 3\n")
    bad = {
        "image.py": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40,  # binary with a code name
        "module.txt": b"\x7fELF\x02\x01\x01" + b"\x00" * 2000,  # a .so renamed
        "cache.pyc": b"\xa7\r\r\n" + b"\x00" * 100,
        "invalid_utf8.py": b"x = '\xff\xfe\xfa\xc3\x28'\n" * 20,
        "nul.txt": b"abc\x00def\n" * 50,
        "empty.py": b"",
        "spaces.py": b"   \n\t\n  ",
    }
    for rel, data in bad.items():
        (repo / rel).write_bytes(data)
    (repo / "bundle.js").write_text("var a=1;" * (50 * 2**20 // 8))  # 50 MB on one line
    with open(repo / "huge.txt", "wb") as fh:  # sparse: 200 MB apparent, no disk used
        fh.truncate(200 * 2**20)
    os.symlink(secret, repo / "link_to_secret.txt")
    os.symlink(root / "outside_dir", repo / "link_to_dir")
    os.symlink(root / "missing.txt", repo / "broken.txt")
    os.symlink(repo / "loop_b", repo / "loop_a")
    os.symlink(repo / "loop_a", repo / "loop_b")
    unreadable = repo / "unreadable.py"
    unreadable.write_text("UNREADABLE = 1\n")
    os.chmod(unreadable, 0)
    # archives next to it: one that escapes, one bomb
    with zipfile.ZipFile(repos / "escape.zip", "w") as zf:
        zf.writestr("ok/inside.py", "ZIP_INSIDE_OK = 1\n")
        zf.writestr("../../evil.py", f"EVIL = '{SECRET}'\n")
    with tarfile.open(repos / "bomb.tar.gz", "w:gz") as tf:
        data = b"\0" * (60 * 2**20)  # each under --max-file-mb, together past 100x the archive
        for k in range(3):
            info = tarfile.TarInfo(f"bomb/zeros{k}.py")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        ok = b"TAR_OK = 1\n"
        info = tarfile.TarInfo("bomb/ok.py")
        info.size = len(ok)
        tf.addfile(info, io.BytesIO(ok))
    many = repos / "many"
    many.mkdir()
    for k in range(100):
        sub = many / f"m{k:03d}"
        sub.mkdir()
        for j in range(300):
            (sub / f"f{j:04d}.py").write_text(f"V{k}_{j} = {j}\n")
    return repos


def _decoded_output(out: Path, qwen3) -> str:
    m = json.loads((out / "manifest.json").read_text())
    parts = []
    for shard in m["shards"]:
        table = pa.ipc.open_stream((out / shard["path"]).read_bytes()).read_all()
        for ids in table.column("input_ids").to_pylist():
            parts.append(qwen3.tokenizer.decode(ids, skip_special_tokens=False))
    return "".join(parts)


@contextlib.contextmanager
def _once_for_all_workers(tmp_path_factory, name: str):
    """A folder that the session's pytest-xdist workers share, built by the first one to get
    its lock (the others wait, then reuse it): the hostile corpus and its clean run take ~35 s,
    which every worker running one of these tests paid on its own."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, above each worker's own
    folder = base / f"shared-{name}"
    with open(base / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    with _once_for_all_workers(tmp_path_factory, "hostile") as root:
        if not (root / ".done").is_file():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            (root / ".done").write_text(str(_make_hostile_root(root)))
        return Path((root / ".done").read_text())


def _args(repos: Path, out: Path, qwen3_dir) -> list:
    return [
        "--runner",
        "DirectRunner",
        "--repos-root",
        repos,
        "--tokenizer",
        qwen3_dir,
        "--seq-len",
        "65536",
        "--max-file-mb",
        "64",
        "--output",
        out,
    ]


@pytest.fixture(scope="module")
def clean_run(hostile, tmp_path_factory, qwen3_dir):
    with _once_for_all_workers(tmp_path_factory, "clean") as root:
        out, seconds = root / "out", root / "seconds.json"
        if not seconds.is_file():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            started = time.monotonic()
            proc = run_cli("pipeline.run", *_args(hostile, out, qwen3_dir), timeout=1200)
            assert proc.returncode == 0, proc.stderr[-3000:]
            seconds.write_text(json.dumps(time.monotonic() - started))
        CLEAN_SECONDS[:] = [json.loads(seconds.read_text())]
        return out


def test_hostile_corpus_completes_with_every_bad_file_rejected(clean_run, hostile, qwen3):
    assert validate_output(str(clean_run)).total == 0
    assert not list(clean_run.glob(".staging*"))  # no temporary files after success
    rejects = [json.loads(x) for x in (clean_run / "rejects.jsonl").read_text().splitlines()]
    reason = {}
    for r in rejects:
        reason[r["path"].replace(str(hostile), "")] = r["reason"]
    expected = {
        "/messy/image.py": "binary",
        "/messy/module.txt": "binary",
        "/messy/cache.pyc": "binary",
        "/messy/invalid_utf8.py": "undecodable",
        "/messy/nul.txt": "binary",
        "/messy/empty.py": "empty",
        "/messy/spaces.py": "empty",
        "/messy/bundle.js": "minified",
        "/messy/huge.txt": "too_large",
        "/messy/link_to_secret.txt": "symlink",
        "/messy/link_to_dir": "symlink",
        "/messy/broken.txt": "broken_symlink",
        "/messy/loop_a": "broken_symlink",
        "/messy/loop_b": "broken_symlink",
        "/escape.zip!../../evil.py": "path_escape",
        "/bomb.tar.gz!bomb/zeros2.py": "decompression_bomb",
    }
    for path, why in expected.items():
        assert reason.get(path) == why, (path, reason.get(path))
    if os.geteuid() != 0:  # root reads any file; the reject cannot be provoked as root
        assert reason.get("/messy/unreadable.py") == "unreadable"
    assert all(r["reason"] and r["path"] for r in rejects)
    text = _decoded_output(clean_run, qwen3)
    for marker in (
        "SPACED_NAME_OK",
        "NEWLINE_NAME_OK",
        "UTF16_BOM_OK café",
        "UTF16_NOBOM_OK",
        "LATIN1_OK = 'café'",
        "BIG_OK",
        "DEEP_OK",
        "BADBYTES_NAME_OK",
        "ZIP_INSIDE_OK",
        "TAR_OK",
        "class JSONDecoder",
        "utility module for the app",
        "V99_299 = 299",
    ):
        assert marker in text, marker
    docs = pa.ipc.open_stream((clean_run / "documents.arrow").read_bytes()).read_all()
    many = next(r for r in docs.to_pylist() if r["doc_id"] == "code/many")
    assert len(many["files"]) == 30_000


def test_nothing_from_outside_the_root_appears_anywhere(clean_run, qwen3):
    assert SECRET not in _decoded_output(clean_run, qwen3)
    for path in clean_run.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_killed_runs_leave_no_manifest_and_the_rerun_equals_a_clean_run(
    clean_run, hostile, tmp_path, qwen3_dir
):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "pipeline.run", *map(str, _args(hostile, out, qwen3_dir))]
    # Kills at 3%, 45% and 85% of a clean run's wall time: startup, reading to cutting,
    # writing and publishing.
    killed = 0
    for fraction in (0.03, 0.45, 0.85):
        delay = fraction * CLEAN_SECONDS[0]
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.returncode == 0:  # finished before the kill: start the next one afresh
            shutil.rmtree(out)
            continue
        if (out / "manifest.json").exists():
            # killed after publishing (on its way out): the output must be the whole, final one
            got = json.loads((out / "manifest.json").read_text())
            want = json.loads((clean_run / "manifest.json").read_text())
            assert [s["sha256"] for s in got["shards"]] == [s["sha256"] for s in want["shards"]]
            shutil.rmtree(out)
            continue
        killed += 1
    assert killed >= 2, f"only {killed} of 3 runs were killed before they finished"
    proc = run_cli("pipeline.run", *_args(hostile, out, qwen3_dir), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ma = json.loads((out / "manifest.json").read_text())
    mb = json.loads((clean_run / "manifest.json").read_text())
    assert [s["sha256"] for s in ma["shards"]] == [s["sha256"] for s in mb["shards"]]
    for name in ("documents.arrow", "rejects.jsonl"):
        a = (out / name).read_bytes().replace(str(out).encode(), b"")
        b = (clean_run / name).read_bytes().replace(str(clean_run).encode(), b"")
        assert a == b, name
    for shard in ma["shards"]:
        assert (out / shard["path"]).read_bytes() == (clean_run / shard["path"]).read_bytes()
    assert not list(out.glob(".staging*"))
    ids = np.concatenate(
        [
            np.asarray(
                pa.ipc.open_stream((out / s["path"]).read_bytes()).read_all().column("n_tokens")
            )
            for s in ma["shards"]
        ]
    )
    assert int(ids.sum()) == ma["counts"]["document_tokens"]
