"""Paths as the report and the sample inspector show them: relative to the input they came from.

The manifest's ``config`` lists every input as an absolute path (``--books``, ``--repos``,
``--repos-root``, ``--documents``; the demo corpus: its standard-library packages). A path
under one of them is shown from the input's own name on::

    input  /home/ana/src/all-repos          (--repos-root)
    path   /home/ana/src/all-repos/tool/__pycache__
    shown  all-repos/tool/__pycache__

Archive members (``repo.zip!src/a.py``) and records (``pg19.jsonl:12``) keep their suffix. A
path under no input shows its last component only. ``rejects.jsonl`` and ``documents.arrow``
keep the full paths: they are outputs that scripts read.
"""

from __future__ import annotations

INPUT_KEYS = ("books", "repos", "repos_root", "documents", "hf_dataset")
_SUFFIX_MARKS = ("/", "!", ":")


def input_roots(config: dict) -> list[str]:
    """The inputs of a run (its manifest's ``config``), longest first."""
    roots: list[str] = []
    for key in INPUT_KEYS:
        value = config.get(key) or []
        roots += [value] if isinstance(value, str) else [p for p in value if isinstance(p, str)]
    if config.get("demo_corpus"):
        from pipeline.demo import demo_repositories

        roots += demo_repositories()
    cleaned = {r.rstrip("/") for r in roots if r.rstrip("/")}
    return sorted(cleaned, key=lambda r: (-len(r), r))


def _last(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] or path


def shown_path(path: str, roots: list[str]) -> str:
    """``path`` from the name of the input that holds it (see the module docstring)."""
    for root in roots:
        if path == root or (path.startswith(root) and path[len(root)] in _SUFFIX_MARKS):
            return _last(root) + path[len(root) :]
    return _last(path) if path.startswith("/") or "://" in path else path


def shown_tokenizer(name: str) -> str:
    """A tokenizer as named in the manifest, without the machine's folders: a Hub id or the
    bundled name as it is, a local path by its folder (``qwen3``, ``bpe16k/tokenizer.json``)."""
    if not (name.startswith(("/", "~")) or "://" in name):
        return name
    parts = name.rstrip("/").rsplit("/", 2)
    return "/".join(parts[-2:]) if parts[-1] == "tokenizer.json" else parts[-1]
