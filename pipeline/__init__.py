"""Beam wiring and command-line tools of longctx."""

import logging

__version__ = "0.1.0"


class _DropBeamImportNoise(logging.Filter):
    """Beam logs 'apitools not found ...' on import when the GCP extras are absent; users
    without GCP do not need it (GCS paths then fail with Beam's own clear error)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


logging.getLogger().addFilter(_DropBeamImportNoise())
