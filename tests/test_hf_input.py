"""--hf-dataset: a Hugging Face dataset as input, offline (save_to_disk folders, data files)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from tests.conftest import BOOKS, run_cli

datasets = pytest.importorskip("datasets")

BASE = ["--runner", "DirectRunner", "--seq-len", "4096"]


def _docs(out):
    table = pa.ipc.open_stream((out / "documents.arrow").read_bytes()).read_all()
    return {d["doc_id"]: d for d in table.to_pylist()}


def test_save_to_disk_folder_with_splits_and_a_text_field(tmp_path):
    kafka = (BOOKS / "kafka-metamorphosis.txt").read_text()
    rows = {
        "content": [kafka[:20000], "def main():\n    return 0\n", ""],
        "id": ["kafka", "tool", "blank"],
        "kind": ["book", "code", "book"],
    }
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(rows),
            "validation": datasets.Dataset.from_dict({k: v[:1] for k, v in rows.items()}),
        }
    )
    folder = tmp_path / "corpus"
    dd.save_to_disk(str(folder))
    out = tmp_path / "out"
    proc = run_cli(
        "pipeline.run", *BASE, "--hf-dataset", folder, "--text-field", "content", "--output", out
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    docs = _docs(out)
    assert sorted(docs) == ["hf/corpus/kafka", "hf/corpus/tool"]
    assert docs["hf/corpus/tool"]["kind"] == "code"
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["path"].rsplit(":", 1)[1], r["reason"]) for r in rejects] == [("2", "empty")]
    out2 = tmp_path / "out2"
    proc = run_cli(
        "pipeline.run",
        *BASE,
        "--hf-dataset",
        f"{folder}:validation",
        "--text-field",
        "content",
        "--output",
        out2,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(_docs(out2)) == ["hf/corpus/validation/kafka"]


def test_jsonl_data_file_and_a_wrong_text_field(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text(
        "".join(
            json.dumps({"body": f"Document number {i}, with its own words."}) + "\n"
            for i in range(3)
        )
    )
    out = tmp_path / "out"
    proc = run_cli("pipeline.run", *BASE, "--hf-dataset", data, "--output", out)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert f"--hf-dataset {data}: rows have text fields body; no 'text'; use --text-field body" in (
        proc.stderr
    )
    assert not out.exists()
    proc = run_cli(
        "pipeline.run", *BASE, "--hf-dataset", data, "--text-field", "body", "--output", out
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(_docs(out)) == ["hf/rows/0", "hf/rows/1", "hf/rows/2"]
