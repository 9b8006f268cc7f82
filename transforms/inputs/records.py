"""Ready documents from JSONL or Parquet files (``--documents``): a ``text`` column (another
name with ``--text-field``), optional ``id``, ``kind`` (``book`` or ``code``; default ``book``)
and ``path``.

Each row becomes one document with id ``<prefix>/<id or row number>``. A row without usable
text, with an unknown kind or a repeated id is a :class:`Reject` naming ``file:row``; the other
rows still count.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from transforms.documents import BOOK, CODE, KINDS, Reject, RejectError, TextDocument
from transforms.inputs.reading import ReadSettings, display_path

RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")


def _rows(path: str, text_field: str = "text") -> Iterator[tuple[int, dict | None, str]]:
    """Yield ``(row_number, record or None, error)`` for each row of the file."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        columns = [c for c in dict.fromkeys((text_field, "id", "kind", "path")) if c in names]
        if text_field not in columns:
            raise RejectError(
                "bad_records", f"no {text_field!r} column (columns: {', '.join(names)})"
            )
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


def records_to_documents(
    rows: Iterable[tuple[int, dict | None, str]],
    prefix: str,
    limits: ReadSettings,
    origin: str,
) -> Iterator[TextDocument | Reject]:
    """``(row_number, record or None, error)`` rows -> documents and rejects: the rules every
    record source shares (JSONL, Parquet, a Hugging Face dataset). Document ids are
    ``<prefix>/<id or row number>``; the text is read from ``limits.text_field``."""
    text_field = limits.text_field
    seen: set[str] = set()
    for row, rec, error in rows:
        where = f"{origin}:{row}"
        if rec is None:
            yield Reject(where, "bad_record", error)
            continue
        text = rec.get(text_field)
        if not isinstance(text, str) or not text.strip():
            yield Reject(where, "empty", f"no text in the {text_field!r} field")
            continue
        if len(text.encode("utf-8", "surrogatepass")) > limits.max_file_bytes:
            yield Reject(
                where, "too_large", f"text over --max-file-mb {limits.max_file_bytes / 2**20:g}"
            )
            continue
        kind = rec.get("kind") or limits.documents_kind
        if kind not in KINDS:
            yield Reject(where, "bad_record", f"kind {kind!r} is not one of {', '.join(KINDS)}")
            continue
        rid = rec.get("id")
        doc_id = f"{prefix}/{rid if rid not in (None, '') else row}"
        if doc_id in seen:
            yield Reject(where, "duplicate_id", f"id {doc_id!r} already used in this input")
            continue
        seen.add(doc_id)
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        rel = str(rec.get("path") or doc_id)
        if kind == CODE:
            yield TextDocument(doc_id, CODE, where, [text], files=[rel], title=rel)
        else:
            yield TextDocument(doc_id, BOOK, where, [text], title=rel)


def read_records(
    path: str,
    prefix: str,
    limits: ReadSettings,
    origin: str | None = None,
) -> Iterator[TextDocument | Reject]:
    """Rows of one JSONL/Parquet file as documents (:func:`records_to_documents`).

    ``origin``: the name to report (a remote file read into a local copy)."""
    origin = origin or display_path(path)
    try:
        yield from records_to_documents(_rows(path, limits.text_field), prefix, limits, origin)
    except RejectError as err:
        yield Reject(origin, err.reason, err.detail)
    except (OSError, ValueError) as err:
        yield Reject(origin, "unreadable", str(err))


def probe_records(path: str, limits: ReadSettings, max_rows: int = 10_000) -> tuple[bool, str]:
    """Whether a local records file yields at least one document, looking at its first
    ``max_rows`` rows only. Returns ``(usable, what_was_found)``; when no row has text in
    ``limits.text_field`` the description names the fields the records do have, and the one field
    that holds text in most of them, as a hint (``use --text-field content``)."""
    text_field = limits.text_field
    fields: dict[str, int] = {}
    texty: dict[str, int] = {}
    rows = 0
    try:
        if path.endswith(".parquet"):
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pq.ParquetFile(path).schema_arrow
            if text_field in schema.names:
                return True, ""
            strings = [
                f.name
                for f in schema
                if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
            ]
            return False, _fields_hint(schema.names, strings, text_field, "columns")
        for _, rec, _ in _rows(path, text_field):
            rows += 1
            if rec is not None:
                value = rec.get(text_field)
                if isinstance(value, str) and value.strip():
                    return True, ""
                for key, value in rec.items():
                    fields[key] = fields.get(key, 0) + 1
                    if isinstance(value, str) and value.strip():
                        texty[key] = texty.get(key, 0) + 1
            if rows >= max_rows:
                break
    except RejectError as err:
        return False, err.detail
    except (OSError, ValueError) as err:
        return False, f"unreadable ({err})"
    if not rows:
        return False, "no records (an empty file)"
    if not fields:
        return False, f"{rows} rows, none a JSON object"
    return False, _fields_hint(sorted(fields), sorted(texty, key=texty.get), text_field, "fields")


def _fields_hint(names, text_like, text_field: str, what: str) -> str:
    hint = f"records have {what} {', '.join(names)}; no {text_field!r}"
    candidates = [n for n in reversed(text_like) if n not in ("id", "kind", "path")]
    if candidates:
        hint += f"; use --text-field {candidates[0]}"
    return hint
