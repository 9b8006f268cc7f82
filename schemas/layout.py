"""Every name in an output folder (docs/contracts.md section 2), spelled here and nowhere else.

OUT/
  manifest.json          MANIFEST: written last, atomically
  documents.arrow        DOCUMENTS
  shards/                SHARDS_DIR: train-00000-of-00003.arrow, validation-00000-of-00001.arrow
  rejects.jsonl          REJECTS
  report/                REPORT_DIR: summary.md (REPORT_SUMMARY), report.html (REPORT_HTML), PNG plots
  .lock                  LOCK: held while a run writes the folder (pipeline/lock.py)
  .staging-<pid>/        STAGING: one run's files before they are published
    tokens/              TOKENS_DIR: the token store (pipeline/token_store.py)
    early/               EARLY_DIR: documents tokenized while reading (pipeline/steps/early.py)
    shards.json          SHARD_STATS, plan.json PLAN_SUMMARY: driver-side bookkeeping
    plots.arrow          PLOT_DATA: what the report's plots are drawn from, written by the
                         plan step so that they are drawn while the shards are written
  .cache/tokens/         CACHE_DIR / TOKENS_DIR: the --incremental cache
  .longctx-output        MARKER: written before a run first stages or publishes here; with
                         manifest.json, what says the published names are this pipeline's
                         (a run never replaces files it did not write) and that the folder is
                         an output, never read back as input
"""

from __future__ import annotations

import json
import re

MANIFEST = "manifest.json"
DOCUMENTS = "documents.arrow"
REJECTS = "rejects.jsonl"
SHARDS_DIR = "shards"
REPORT_DIR = "report"
SUMMARY_MD = "summary.md"
REPORT_SUMMARY = f"{REPORT_DIR}/{SUMMARY_MD}"
REPORT_HTML = "report.html"
LOCK = ".lock"
STAGING = ".staging"
CACHE_DIR = ".cache"
TOKENS_DIR = "tokens"
EARLY_DIR = "early"
MARKER = ".longctx-output"
REPORT_PLOTS = (
    "doc_lengths.png",
    "sample_fill.png",
    "tokens_per_source.png",
    "dependency_scores.png",
)
SHARD_STATS = "shards.json"
PLAN_SUMMARY = "plan.json"
PLOT_DATA = "plots.arrow"

# What a run publishes from its staging folder into OUT (the manifest comes last, on its own).
PUBLISHED = (SHARDS_DIR, DOCUMENTS, REJECTS, REPORT_DIR)

TRAIN, VALIDATION = "train", "validation"
SPLITS = (TRAIN, VALIDATION)
SHARD_FORMATS = ("arrow", "parquet")


_SHARD_NAME = re.compile(r"(train|validation)-\d{5}-of-\d{5}\.(arrow|parquet)")


def is_shard_name(name: str) -> bool:
    """Whether a file name in ``shards/`` is one :func:`shard_name` gives."""
    return bool(_SHARD_NAME.fullmatch(name))


def report_names() -> frozenset[str]:
    """The files a run writes in ``report/``."""
    return frozenset((SUMMARY_MD, REPORT_HTML, *REPORT_PLOTS))


PIPELINE_NAME = "longctx"  # the manifest's pipeline.name


def is_pipeline_manifest(raw: bytes | str) -> bool:
    """Whether ``raw`` is a manifest.json this pipeline wrote (its ``pipeline.name``), not some
    other tool's ``manifest.json`` (a browser extension's, a web app's)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return False
    return isinstance(data, dict) and (data.get("pipeline") or {}).get("name") == PIPELINE_NAME


def marked_folders(paths) -> set[str]:
    """The folders (relative, ``""`` the root) that hold the marker, among the ``/``-separated
    relative ``paths`` of a listing (a remote prefix, an archive)."""
    return {p.rpartition("/")[0] for p in paths if p.rpartition("/")[2] == MARKER}


def enclosing_folder(path: str, folders: set[str]) -> str | None:
    """The one of ``folders`` that the relative ``path`` lies in (``""``: everything), or None."""
    if "" in folders:
        return ""
    parts = path.split("/")
    return next(
        (f for f in ("/".join(parts[:k]) for k in range(1, len(parts))) if f in folders), None
    )


def shard_name(split: str, index: int, count: int, fmt: str) -> str:
    """``train-00000-of-00003.arrow``: the ``datasets`` naming, one series per split."""
    return f"{split}-{index:05d}-of-{count:05d}.{fmt}"


def shard_path(split: str, index: int, count: int, fmt: str) -> str:
    """A shard's path relative to OUT, as the manifest lists it."""
    return f"{SHARDS_DIR}/{shard_name(split, index, count, fmt)}"


def split_of(entry: dict) -> str:
    """The split of a manifest shard entry: its ``split`` key, else its file name's prefix
    (manifests written before the validation split existed hold only train shards)."""
    if entry.get("split"):
        return entry["split"]
    name = entry["path"].rsplit("/", 1)[-1]
    return VALIDATION if name.startswith(f"{VALIDATION}-") else TRAIN
