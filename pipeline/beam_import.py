"""Apache Beam imported without the optional connectors it imports eagerly and this pipeline
never uses, in the processes longctx owns: the command line's driver and the worker pool's
server.

``import apache_beam`` imports, wherever they are installed, pymongo and bson
(``io.mongodbio``) and the BigQuery connector (``io``'s package module, with Pub/Sub and the
cross-language I/O after it). Beam guards each with ``try: ... except ImportError``: without
them the SDK works and those connectors are unavailable. No step of this pipeline reads or
writes MongoDB, BigQuery or Pub/Sub.

The worker pool's imports (Beam's harness and the pipeline's steps), measured on the 2-core CPU
machine, 5 runs each: 0.66-0.70 s -> 0.57-0.60 s. On nvidia-h200's CPUs ``python -X
importtime`` gave pymongo 0.42 s and the BigQuery module 0.41 s of Beam's ~3 s. The pool
server's import is the start's critical path of a ``multi_processing`` run: the run's workers
are forked after it.

pandas, which Beam imports too, is not refused: pyarrow imports it at its first ``pa.array``
whatever the input (its pandas shim, pyarrow 25), so a process that builds a table pays for it
anyway, and the pool's forked workers had better find it imported.

Only Beam's own imports of those names are refused (the importing module's name starts with
``apache_beam``), and only while :func:`import_beam` imports Beam: afterwards they import as
usual. A process that imported Beam before has nothing changed. The filesystems Beam registers
(local, GCS, S3, HDFS, Azure: whichever are installed) are the same (test).
``LONGCTX_LEAN_BEAM=0`` imports Beam as it is.
"""

from __future__ import annotations

import logging
import os
import sys

# Beam's optional imports refused while it is imported (top-level names and dotted modules)
SKIPPED = ("pymongo", "bson", "apache_beam.io.gcp.bigquery")
SWITCH = "LONGCTX_LEAN_BEAM"  # "0": Beam imported as it is
# what Beam logs when it finds no bson (io/mongodbio.py), expected here
_MONGO_LOGGER, _MONGO_NOTE = "apache_beam.io.mongodbio", "Could not find a compatible bson"


def _importer() -> str:
    """The module whose ``import`` statement is being served (importlib's frames skipped)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
        frame = frame.f_back
    return "" if frame is None else str(frame.f_globals.get("__name__", ""))


class _RefuseBeamOptionals:
    """A meta path finder: an import of :data:`SKIPPED` made by Beam raises ImportError."""

    def find_spec(self, name, path=None, target=None):
        if name in SKIPPED and _importer().startswith("apache_beam"):
            raise ImportError(f"{name}: not imported with Apache Beam here (pipeline.beam_import)")
        return None


def _not_mongo_note(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_MONGO_NOTE)


def import_beam() -> bool:
    """Import Apache Beam without :data:`SKIPPED`; True if it was imported so, False if Beam
    was already imported (nothing changed) or ``LONGCTX_LEAN_BEAM=0``."""
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
