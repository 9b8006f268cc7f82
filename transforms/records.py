"""Ready documents from JSONL or Parquet files (``--documents``): a ``text`` column, optional
``id``, ``kind`` (``book`` or ``code``; default ``book``) and ``path``.

Each row becomes one document with id ``<prefix>/<id or row number>``. A row without usable
text, with an unknown kind or a repeated id is a :class:`Reject` naming ``file:row``; the other
rows still count.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from transforms.documents import BOOK, CODE, KINDS, Reject, RejectError, TextDocument
from transforms.reading import ReadLimits, display_path

RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")


def _rows(path: str) -> Iterator[tuple[int, dict | None, str]]:
    """Yield ``(row_number, record or None, error)`` for each row of the file."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        columns = [c for c in ("text", "id", "kind", "path") if c in pf.schema_arrow.names]
        if "text" not in columns:
            raise RejectError("bad_records", "no 'text' column")
        row = 0
        for batch in pf.iter_batches(batch_size=1024, columns=columns):
            for rec in batch.to_pylist():
                yield row, rec, ""
                row += 1
        return
    with open(path, "rb") as fh:
        for row, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as err:
                yield row, None, f"invalid JSON ({err})"
                continue
            yield (
                row,
                rec if isinstance(rec, dict) else None,
                "" if isinstance(rec, dict) else "not a JSON object",
            )


def read_records(
    path: str, prefix: str, limits: ReadLimits, origin: str | None = None
) -> Iterator[TextDocument | Reject]:
    """Rows of one JSONL/Parquet file; document ids are ``<prefix>/<id or row number>``.

    ``origin``: the name to report (a remote file read into a local copy)."""
    origin = origin or display_path(path)
    seen: set[str] = set()
    try:
        for row, rec, error in _rows(path):
            where = f"{origin}:{row}"
            if rec is None:
                yield Reject(where, "bad_record", error)
                continue
            text = rec.get("text")
            if not isinstance(text, str) or not text.strip():
                yield Reject(where, "empty", "no text in the 'text' field")
                continue
            if len(text.encode("utf-8", "surrogatepass")) > limits.max_file_bytes:
                yield Reject(
                    where, "too_large", f"text over --max-file-mb {limits.max_file_bytes / 2**20:g}"
                )
                continue
            kind = rec.get("kind") or BOOK
            if kind not in KINDS:
                yield Reject(where, "bad_record", f"kind {kind!r} is not one of {', '.join(KINDS)}")
                continue
            rid = rec.get("id")
            doc_id = f"{prefix}/{rid if rid not in (None, '') else row}"
            if doc_id in seen:
                yield Reject(where, "duplicate_id", f"id {doc_id!r} already used in this file")
                continue
            seen.add(doc_id)
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            rel = str(rec.get("path") or doc_id)
            if kind == CODE:
                yield TextDocument(doc_id, CODE, where, [text], files=[rel], title=rel)
            else:
                yield TextDocument(doc_id, BOOK, where, [text], title=rel)
    except RejectError as err:
        yield Reject(origin, err.reason, err.detail)
    except (OSError, ValueError) as err:
        yield Reject(origin, "unreadable", str(err))
