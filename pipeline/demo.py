"""The embedded demo corpus: packages of the running Python's standard library.

Every fresh machine with Python has them, no network needed; each package is one repository.
Together about 13 MB of real code: about 3.5M Qwen3 tokens, of which several packages are
longer than the default 65,536-token samples, so both windowing and packing run.
"""

from __future__ import annotations

import os
import sysconfig

DEMO_PACKAGES = (
    "asyncio",
    "collections",
    "concurrent",
    "ctypes",
    "email",
    "encodings",
    "ensurepip",
    "http",
    "importlib",
    "json",
    "logging",
    "multiprocessing",
    "pydoc_data",
    "re",
    "sqlite3",
    "tomllib",
    "unittest",
    "urllib",
    "wsgiref",
    "xml",
    "zoneinfo",
)


def demo_repositories() -> list[str]:
    """Absolute paths of the demo packages present in this Python's standard library."""
    stdlib = sysconfig.get_paths()["stdlib"]
    found = [os.path.join(stdlib, p) for p in DEMO_PACKAGES]
    found = [p for p in found if os.path.isdir(p)]
    if not found:
        raise RuntimeError(f"no standard-library package found under {stdlib} for the demo corpus")
    return found
