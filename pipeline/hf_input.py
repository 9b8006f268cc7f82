"""``--hf-dataset NAME_OR_PATH[:SPLIT]``: documents from a Hugging Face dataset.

What it takes, and how it is read (``datasets`` is needed: ``pip install datasets``):

- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``: ``load_from_disk``
  (memory-mapped, no copy), the split chosen from a DatasetDict (default ``train``);
- a data file (``.jsonl``, ``.json``, ``.parquet``, ``.csv``): ``load_dataset(builder,
  data_files=..., streaming=True)``;
- a Hub id (``owner/name``): ``load_dataset(id, split=SPLIT, streaming=True)``, so rows arrive
  as they download and nothing is cached whole; offline it needs ``HF_HUB_OFFLINE=1`` and a
  cached copy.

Each row becomes one document by the rules every record source shares
(:func:`transforms.inputs.records.records_to_documents`): the text in ``--text-field``, optional
``id``, ``kind`` (else ``--documents-kind``) and ``path``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class HFInputError(ValueError):
    """An --hf-dataset that cannot be read; the message names it."""


def parse_spec(spec: str) -> tuple[str, str]:
    """``NAME_OR_PATH[:SPLIT]`` -> (name or path, split); the split defaults to ``train``."""
    name, sep, split = spec.rpartition(":")
    if sep and split and "/" not in split and not os.path.exists(spec):
        return name, split
    return spec, "train"


def _dataset(spec: str):
    try:
        import datasets
    except ImportError:
        raise HFInputError(f"--hf-dataset {spec}: needs `pip install datasets`") from None
    name, split = parse_spec(spec)
    path = Path(name).expanduser()
    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise HFInputError(
                        f"--hf-dataset {spec}: no split {split!r} (it has {', '.join(ds)})"
                    )
                ds = ds[split]
            return ds
        if path.is_file():
            builder = BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise HFInputError(
                    f"--hf-dataset {spec}: data files are {', '.join(BUILDERS)} files"
                )
            return datasets.load_dataset(
                builder, data_files=str(path), split="train", streaming=True
            )
        return datasets.load_dataset(name, split=split, streaming=True)
    except HFInputError:
        raise
    except Exception as err:  # datasets raises many kinds: FileNotFoundError, ValueError...
        raise HFInputError(
            f"--hf-dataset {spec}: cannot load it ({type(err).__name__}: {err})"
        ) from err


def dataset_rows(spec: str) -> Iterator[tuple[int, dict | None, str]]:
    """``(row_number, record, "")`` for every row of the dataset, in order."""
    for row, rec in enumerate(_dataset(spec)):
        yield (
            row,
            (dict(rec) if isinstance(rec, dict) else None),
            ("" if isinstance(rec, dict) else "not a mapping"),
        )


def probe(spec: str, text_field: str, max_rows: int = 1000) -> str | None:
    """None when one of the first rows has text in ``text_field``; else what was found."""
    fields: dict[str, int] = {}
    for row, rec, _ in dataset_rows(spec):
        value = (rec or {}).get(text_field)
        if isinstance(value, str) and value.strip():
            return None
        for key, val in (rec or {}).items():
            if isinstance(val, str) and val.strip():
                fields[key] = fields.get(key, 0) + 1
        if row + 1 >= max_rows:
            break
    if not fields:
        return "no rows with text"
    hint = max((k for k in fields if k not in ("id", "kind", "path")), key=fields.get, default="")
    names = ", ".join(sorted(fields))
    return f"rows have text fields {names}; no {text_field!r}" + (
        f"; use --text-field {hint}" if hint else ""
    )


def doc_prefix(spec: str) -> str:
    """The document id prefix of a dataset: ``hf/<name>`` (a path's last component)."""
    name, split = parse_spec(spec)
    base = Path(name).stem if os.path.exists(name) else name.replace("/", "__")
    return f"hf/{base}" + (f"/{split}" if split != "train" else "")
