"""Mixture control: per-kind token shares with length-aware, seeded document selection.

``--mix book=0.4,code=0.6`` asks that 40% of the output tokens come from books and 60% from
code. Nothing is repeated: the largest output that meets the shares from the documents at hand
is ``T = min_k(available_k / w_k)``, and each kind keeps about ``w_k * T`` tokens. Kinds not
named get weight 0 and are left out. Inside a kind, documents are taken in the order of the
weighted-sampling key ``u ** (1 / n_tokens)`` (Efraimidis-Spirakis; ``u`` is a hash of
``--seed`` and the document id), so a document's chance to be kept grows with its length, the
length-aware upsampling of long data that Fu et al. 2024 ("Data Engineering for Scaling
Language Models to 128K Context") found to matter, while every kind keeps its share. A
document is taken while it brings the kind's total closer to its target. Documents left out
are listed in ``rejects.jsonl`` (reason ``mixture``); the manifest reports what was asked for,
what was available and what was reached.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable


class MixError(ValueError):
    """A ``--mix`` value that cannot be used."""


def parse_mix(spec: str | None) -> dict[str, float] | None:
    """``"book=0.4,code=0.6"`` -> ``{"book": 0.4, "code": 0.6}`` (normalised to sum 1).

    >>> parse_mix("book=1,code=3")
    {'book': 0.25, 'code': 0.75}
    """
    if spec is None or not spec.strip():
        return None
    out: dict[str, float] = {}
    for item in spec.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not sep or not name or not math.isfinite(weight) or weight < 0:
            raise MixError(f"--mix: {item.strip()!r} is not KIND=WEIGHT with WEIGHT >= 0")
        if name in out:
            raise MixError(f"--mix: {name!r} given twice")
        out[name] = weight
    total = sum(out.values())
    if total <= 0:
        raise MixError("--mix: the weights sum to 0")
    return {k: v / total for k, v in out.items()}


def _priority(seed: int, doc_id: str, n_tokens: int) -> float:
    digest = hashlib.sha256(f"{seed}\0{doc_id}".encode()).digest()
    u = (int.from_bytes(digest[:8], "big") + 0.5) / 2**64
    return math.log(u) / max(n_tokens, 1)  # log of u ** (1/n): larger is earlier


def select_mixture(
    docs: Iterable[tuple[str, str, int]], weights: dict[str, float], seed: int = 0
) -> tuple[set[str], dict]:
    """``docs`` are ``(doc_id, kind, n_tokens)``; returns (ids kept, report for the manifest)."""
    docs = sorted(docs)
    available: dict[str, int] = {}
    for _, kind, n in docs:
        available[kind] = available.get(kind, 0) + n
    wanted = {k: w for k, w in weights.items() if w > 0}
    missing = [k for k in wanted if available.get(k, 0) == 0]
    if missing:
        raise MixError(f"--mix names {', '.join(sorted(missing))} but the inputs hold no such kind")
    total = min(available[k] / w for k, w in wanted.items())
    target = {k: w * total for k, w in wanted.items()}
    kept: set[str] = set()
    reached = dict.fromkeys(available, 0)
    for kind in sorted(available):
        if kind not in target:
            continue
        own = [d for d in docs if d[1] == kind]
        own.sort(key=lambda d: (-_priority(seed, d[0], d[2]), d[0]))
        got = 0
        for doc_id, _, n in own:
            if abs(target[kind] - (got + n)) <= abs(target[kind] - got):
                kept.add(doc_id)
                got += n
        reached[kind] = got
    out_total = sum(reached.values()) or 1
    report = {
        "requested": weights,
        "seed": seed,
        "available_tokens": available,
        "selected_tokens": reached,
        "achieved": {k: reached[k] / out_total for k in sorted(reached)},
        "documents_left_out": sum(1 for d in docs if d[0] not in kept),
    }
    return kept, report
