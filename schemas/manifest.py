"""manifest.json (docs/contracts.md section 2): built, written and read here and nowhere else.

The manifest is written last, atomically (``pipeline/output.publish``); a folder without one is
not a finished output. Readers get a :class:`Manifest` (typed access to the keys every tool
uses) that keeps the whole JSON object in ``data`` for the rest.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from schemas.layout import DOCUMENTS, MANIFEST, REJECTS, REPORT_SUMMARY, TRAIN, split_of

FORMAT_VERSION = 1
SHARD_KEYS = ("path", "split", "rows", "tokens", "sha256")


@dataclass
class Manifest:
    """A finished output's manifest: the keys tools rely on, and ``data``, the whole object."""

    seq_len: int
    overlap: int
    tokenizer: dict
    counts: dict
    shards: list[dict]
    validation_doc_ids: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> Manifest:
        return cls(
            seq_len=int(data["seq_len"]),
            overlap=int(data["overlap"]),
            tokenizer=data["tokenizer"],
            counts=data["counts"],
            shards=data["shards"],
            validation_doc_ids=list(data.get("validation_doc_ids") or []),
            data=data,
        )

    def shards_of(self, split: str) -> list[dict]:
        """The shard entries of one split (``train`` or ``validation``), in order."""
        return [s for s in self.shards if split_of(s) == split]

    def to_bytes(self) -> bytes:
        return (json.dumps(self.data, indent=2, sort_keys=False) + "\n").encode("utf-8")


def parse_manifest(raw: bytes | str) -> Manifest:
    return Manifest.from_json(json.loads(raw))


def build_manifest(
    *,
    version: str,
    seq_len: int,
    overlap: int,
    tokenizer: dict,
    config: dict,
    docs: pa.Table,
    shard_stats: list[dict],
    rejects: list[dict],
    plan_summary: dict,
) -> Manifest:
    """The manifest of a run, from its documents table, shard stats, rejects and plan."""
    kinds = docs.column("kind").to_pylist()
    n_tokens = np.asarray(docs.column("n_tokens"), dtype=np.int64)
    by_kind_tokens: Counter = Counter()
    for k, n in zip(kinds, n_tokens.tolist(), strict=True):
        by_kind_tokens[k] += n
    samples = sum(s["rows"] for s in shard_stats)
    tokens = sum(s["tokens"] for s in shard_stats)
    split_counts = {
        split: {
            "samples": sum(s["rows"] for s in shard_stats if s.get("split", TRAIN) == split),
            "tokens": sum(s["tokens"] for s in shard_stats if s.get("split", TRAIN) == split),
        }
        for split in sorted({s.get("split", TRAIN) for s in shard_stats})
    }
    data = {
        "format_version": FORMAT_VERSION,
        "pipeline": {"name": "longctx", "version": version},
        "seq_len": seq_len,
        "overlap": overlap,
        "tokenizer": tokenizer,
        "config": config,
        "counts": {
            "documents": len(kinds),
            "documents_by_kind": dict(sorted(Counter(kinds).items())),
            "document_tokens": int(n_tokens.sum()),
            "document_tokens_by_kind": dict(sorted(by_kind_tokens.items())),
            "samples": samples,
            "tokens": tokens,
            "shards": len(shard_stats),
            "splits": split_counts,
            "rejects": len(rejects),
            "rejects_by_reason": dict(sorted(Counter(r["reason"] for r in rejects).items())),
        },
        "fill_rate": round(tokens / (samples * seq_len), 6) if samples else 0.0,
        "lower_bound_samples": -(-int(n_tokens.sum()) // seq_len),
        "packing": plan_summary.get("packing", {}),
        "mixture": plan_summary.get("mixture"),
        "dependency_order": {
            "edges": int(np.asarray(docs.column("dependency_edges")).sum()),
            "files_on_cycles": int(np.asarray(docs.column("cycle_files")).sum()),
            "unparsed_source_files": int(np.asarray(docs.column("unparsed_files")).sum()),
        },
        "documents": DOCUMENTS,
        "rejects": REJECTS,
        "report": REPORT_SUMMARY,
        "shards": [{k: {"split": TRAIN, **s}[k] for k in SHARD_KEYS} for s in shard_stats],
        "validation_doc_ids": list(plan_summary.get("validation_doc_ids", [])),
    }
    return Manifest.from_json(data)


def manifest_path(out: str) -> str:
    return f"{out.rstrip('/')}/{MANIFEST}"
