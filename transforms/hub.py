"""Telling a local path from a Hugging Face Hub id, and failing fast when the Hub cannot answer.

Both ``--tokenizer`` (the pipeline) and ``--model`` (the trainer) take either. A spec is read as
a Hub id only in the Hub's ``owner/name`` form, and not when it names a folder here: with a
folder ``models/`` in the working directory, ``models/qtiny`` is a mistyped local path, not a
Hub repository. A Hub id that is neither in the local cache nor reachable fails in about two
seconds instead of after the Hub client's retries (23-50 s measured offline).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse


def _cached(repo_id: str, files: tuple[str, ...]) -> bool:
    """Whether one of ``files`` of ``repo_id`` is in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in files)
    except ValueError:  # not a valid repository id
        return False


def looks_like_hub_id(spec: str, files: tuple[str, ...] = ()) -> bool:
    """``owner/name``, not a path here: one slash, no leading ``.``, ``/`` or ``~``, and its
    ``owner`` part not a folder of the working directory, unless the id is in the local cache
    (one of ``files``): ``Qwen/Qwen3-8B`` cached stays a Hub id beside a local ``Qwen/``."""
    if spec.count("/") != 1 or spec.startswith((".", "/", "~")) or spec.endswith("/"):
        return False
    return not Path(spec.split("/", 1)[0]).is_dir() or _cached(spec, files)


def hub_problem(repo_id: str, files: tuple[str, ...], timeout: float = 2.0) -> str | None:
    """None when one of ``files`` of ``repo_id`` is in the local Hugging Face cache or the Hub
    is reachable; else why not (``HF_HUB_OFFLINE``, or the host cannot be reached)."""
    if _cached(repo_id, files):
        return None  # in the local cache: the loaders find it
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    if not offline:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            return None
        except OSError:
            pass
    return "not in the Hugging Face cache and " + (
        "HF_HUB_OFFLINE is set" if offline else f"{host} cannot be reached"
    )
