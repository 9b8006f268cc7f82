"""Beam imported without the connectors the pipeline never uses (pipeline/beam_import.py), in
the command line's driver and the worker pool's server: the start's critical path of a
multi_processing run is the server's Beam import (0.68 -> 0.57 s of its imports here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline.beam_import import SWITCH, _RefuseBeamOptionals
from tests.conftest import REPO

# what Beam 2.77 imports eagerly and the lean import leaves out, written out here (not taken
# from the module under test): pymongo comes after bson in io/mongodbio.py, so bson is refused
SKIPPED = ("pymongo", "bson", "apache_beam.io.gcp.bigquery")

_FACTS = """
import json, sys
import apache_beam as beam
from apache_beam.io.filesystem import FileSystem
import apache_beam.io.filesystems  # registers every filesystem that imports
loaded = [m for m in {skipped!r} if m in sys.modules]
schemes = sorted(str(c.scheme()) for c in FileSystem.get_all_subclasses())
bigquery_names = hasattr(beam.io, "ReadFromBigQuery")
finders_left = [type(f).__name__ for f in sys.meta_path if type(f).__name__ == "_RefuseBeamOptionals"]
# Beam's own later imports of the skipped modules work (the finder is gone)
exec("import bson, pymongo", {{"__name__": "apache_beam.io.later"}})
"""


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={
            **{k: v for k, v in os.environ.items() if k != SWITCH},
            "PYTHONPATH": str(REPO),
            **env,
        },
        timeout=300,
    )


def _facts(lean: bool, **env: str) -> dict:
    code = (
        "from pipeline.beam_import import import_beam\nlean = import_beam()\n"
        if lean
        else "lean = None\nimport apache_beam\n"
    )
    code += _FACTS.format(skipped=SKIPPED)
    code += (
        "print(json.dumps({'lean': lean, 'loaded': loaded, 'schemes': schemes,"
        " 'bigquery_names': bigquery_names, 'finders_left': finders_left,"
        " 'again': __import__('pipeline.beam_import').beam_import.import_beam()}))\n"
    )
    proc = _python(code, **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**json.loads(proc.stdout.splitlines()[-1]), "stderr": proc.stderr}


def test_beam_is_imported_without_its_unused_connectors_and_they_import_afterwards():
    plain, lean = _facts(False), _facts(True)
    assert plain["loaded"] == list(SKIPPED) and plain["bigquery_names"]  # `import apache_beam`
    assert lean["lean"] is True and lean["loaded"] == [] and not lean["bigquery_names"]
    assert lean["finders_left"] == []  # removed once Beam is imported
    # the same filesystems registered (local, and GCS/S3/HDFS/Azure as installed)
    assert lean["schemes"] == plain["schemes"]
    # imported once: a second call changes nothing; and no note about a missing bson
    assert lean["again"] is False
    assert "compatible bson" not in lean["stderr"], lean["stderr"][-2000:]


def test_the_switch_imports_beam_as_it_is():
    off = _facts(True, **{SWITCH: "0"})
    assert off["lean"] is False and off["loaded"] == list(SKIPPED)


@pytest.mark.parametrize(
    ("importer", "statement", "refused"),
    [
        ("apache_beam.io.fake", "import bson", True),
        ("apache_beam", "from pymongo import errors", True),
        ("mine", "import bson", False),
        ("apache_beam_not_beam", "import bson", False),
        # looking a module up is not importing it
        (
            "apache_beam.io.fake",
            "import importlib.util; assert importlib.util.find_spec('bson')",
            False,
        ),
    ],
)
def test_only_beams_own_imports_are_refused(importer, statement, refused):
    """The finder refuses an import of a skipped name made by a Beam module, not one made by
    anything else in the same window."""
    code = (
        "import sys\n"
        f"from pipeline.beam_import import {_RefuseBeamOptionals.__name__}\n"
        f"sys.meta_path.insert(0, {_RefuseBeamOptionals.__name__}())\n"
        "try:\n"
        f"    exec({statement!r}, {{'__name__': {importer!r}}})\n"
        "    print('imported')\n"
        "except ModuleNotFoundError as err:\n"
        "    print('refused', err.name, err)\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[0] == ("refused" if refused else "imported"), proc.stdout


def test_the_command_lines_driver_imports_beam_lean(books_dir, qwen3_dir, tmp_path, monkeypatch):
    """``python -m pipeline.run`` (``main``) asks for it; ``run(lean_beam=True)`` does it before
    the job imports Beam: a whole run's driver ends without the skipped modules."""
    import pipeline.run

    seen = {}

    def fake_run(argv=None, **kw):
        seen.update(kw)
        return 0

    monkeypatch.setattr(pipeline.run, "run", fake_run)
    monkeypatch.setattr(pipeline.run, "exit_now", lambda status: seen.setdefault("status", status))
    pipeline.run.main()
    assert seen == {"lean_beam": True, "status": 0}

    book = sorted(books_dir.glob("*.txt"), key=lambda p: p.stat().st_size)[0]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / book.name).write_bytes(book.read_bytes())
    argv = ["--runner", "DirectRunner", "--books", str(tmp_path / "in"), "--tokenizer",
            str(qwen3_dir), "--output", str(tmp_path / "out"), "--quiet"]  # fmt: skip
    code = (
        "import json, sys\n"
        "from pipeline.run import run\n"
        f"status = run({argv!r}, lean_beam=True)\n"
        f"print(json.dumps([status, [m for m in {SKIPPED!r} if m in sys.modules]]))\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == [0, []]
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_the_pool_servers_workers_run_without_the_skipped_modules(qwen3_dir, tmp_path, monkeypatch):
    """The workers forked from the pool's server (a multi_processing run's) hold Beam imported
    lean: the server imported it so, before the fork."""
    monkeypatch.delenv(SWITCH, raising=False)
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.runners import make_runner
    from pipeline.worker_pool import WorkerPool

    argv = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
    options = PipelineOptions(["--runner", "DirectRunner", *argv])

    def note(x, folder=str(tmp_path), skipped=SKIPPED):  # travels by value
        import json
        import os
        import sys

        with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as f:
            json.dump([os.getppid(), [m for m in skipped if m in sys.modules]], f)
        return x

    with WorkerPool(2, str(qwen3_dir)) as pool:
        with beam.Pipeline(runner=make_runner(options, pool), options=options) as p:
            _ = p | beam.Create(range(16)) | beam.Reshuffle() | beam.Map(note)
        server = pool.server.pid
    facts = [json.loads(f.read_text()) for f in tmp_path.glob("*.json")]
    assert facts and all(parent == server for parent, _ in facts), facts
    assert all(loaded == [] for _, loaded in facts), facts
