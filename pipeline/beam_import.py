"""Apache Beam imported without the optional connectors it imports eagerly and this pipeline
never uses, in the processes longctx owns: the command line's driver and the worker pool's
server; and :func:`no_collections`, the garbage collector off while they import it.

``import apache_beam`` imports, wherever they are installed, pymongo and bson
(``io.mongodbio``) and the BigQuery connector (``io``'s package module, with Pub/Sub and the
cross-language I/O after it). Beam guards each with ``try: ... except ImportError``: without
them the SDK works and those connectors are unavailable. No step of this pipeline reads or
writes MongoDB, BigQuery or Pub/Sub.

The worker pool's imports (Beam's harness and the pipeline's steps), measured on the 2-core CPU
machine, 5 runs each: 0.66-0.70 s -> 0.57-0.60 s; on nvidia-h200's CPUs, 3 runs each: median
3.12 -> 2.31 s (docs/benchmarks.md, session 16). The pool server's import is on the start's
critical path of a ``multi_processing`` run: the run's workers are forked after it.

pandas, which Beam imports too, is not refused: pyarrow imports it at its first ``pa.array``
whatever the input (its pandas shim, pyarrow 25), so a process that builds a table pays for it
anyway, and the pool's forked workers had better find it imported.

Only Beam's own imports of those names are refused (the importing module is ``apache_beam``
or in it), and only while :func:`import_beam` imports Beam: afterwards the modules import as
usual. What Beam made without them stays so for the process: ``io.mongodbio`` has no
MongoClient, and ``apache_beam.io`` lacks the names it would have taken from the BigQuery and
Pub/Sub modules (``beam.io.WriteToBigQuery``, ``beam.io.ReadFromPubSub``, ...; importing
those modules by name still works). No runner code reads those names. A process that imported
Beam before has nothing changed. The filesystems Beam registers (local, GCS, S3, HDFS, Azure:
whichever are installed) are the same (test). ``LONGCTX_LEAN_BEAM=0`` imports Beam as it is.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys

# Beam's optional imports refused while it is imported (top-level names and dotted modules)
SKIPPED = ("pymongo", "bson", "apache_beam.io.gcp.bigquery")
SWITCH = "LONGCTX_LEAN_BEAM"  # "0": Beam imported as it is
# what Beam logs when it finds no bson (io/mongodbio.py), expected here
_MONGO_LOGGER, _MONGO_NOTE = "apache_beam.io.mongodbio", "Could not find a compatible bson"


# the frames of an import statement's machinery, between the statement and a finder (only
# these: importlib.util's and importlib.machinery's are frozen too, and a Beam module calling
# importlib.util.find_spec is not importing)
_IMPORT_MACHINERY = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")


def _importer() -> str:
    """The name of the module whose ``import`` statement is being served: the first frame
    outside this module and the import machinery."""
    frame = sys._getframe(1)
    while frame is not None and (
        frame.f_code.co_filename in _IMPORT_MACHINERY or frame.f_globals.get("__name__") == __name__
    ):
        frame = frame.f_back
    return "" if frame is None else str(frame.f_globals.get("__name__", ""))


def _is_beam(module: str) -> bool:
    return module == "apache_beam" or module.startswith("apache_beam.")


class _RefuseBeamOptionals:
    """A meta path finder: an import of :data:`SKIPPED` made by Beam raises
    ModuleNotFoundError (what Beam's guards expect of a package that is not installed)."""

    def find_spec(self, name, path=None, target=None):
        if name in SKIPPED and _is_beam(_importer()):
            raise ModuleNotFoundError(
                f"{name}: not imported with Apache Beam here (pipeline.beam_import)", name=name
            )
        return None


def _not_mongo_note(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_MONGO_NOTE)


@contextlib.contextmanager
def no_collections():
    """The garbage collector off while a block runs (back on after, unless it was off): for the
    imports of Beam and the pipeline at a process's start, which make ~150,000 objects and set
    off collections that go through all of those made so far. The driver's imports of Beam,
    the steps and the job on the 2-core CPU machine: 0.67-0.68 s -> 0.58 s, 3 runs each
    (session 19, docs/benchmarks.md). Nothing is lost: what became garbage meanwhile is
    collected at the next collection after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def import_beam() -> bool:
    """Import Apache Beam with its imports of :data:`SKIPPED` refused; False if Beam was
    already imported (nothing changed) or ``LONGCTX_LEAN_BEAM=0``, else True (one of them
    imported earlier by something else is simply found)."""
    if "apache_beam" in sys.modules or os.environ.get(SWITCH) == "0":
        return False
    finder = _RefuseBeamOptionals()
    quiet = logging.getLogger(_MONGO_LOGGER)
    sys.meta_path.insert(0, finder)
    quiet.addFilter(_not_mongo_note)
    try:
        import apache_beam  # noqa: F401
    finally:
        sys.meta_path.remove(finder)
        quiet.removeFilter(_not_mongo_note)
    return True
