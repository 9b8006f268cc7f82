"""Tokenization with the real Qwen3 tokenizer."""

import numpy as np
import pytest

from transforms.documents import BOOK, CODE, TextDocument
from transforms.inputs.reading import ReadSettings, read_book
from transforms.samples.tokenize import TokenizerError, chunk_text, encode_document, load_tokenizer


def test_end_of_text_is_endoftext_not_chat_eos(qwen3):
    assert qwen3.end_of_text == "<|endoftext|>" and qwen3.end_of_text_id == 151643
    assert qwen3.vocab_size == 151669


def test_bundled_tokenizer_is_qwen3(qwen3):
    bundled = load_tokenizer(None)
    assert bundled.sha256 == qwen3.sha256 and bundled.name == "bundled:qwen3"


def test_chunked_encoding_equals_whole_encoding_on_a_real_book(books_dir, qwen3):
    doc = read_book(str(books_dir / "melville-moby-dick.txt"), "book/moby", ReadSettings())
    assert len(chunk_text(doc.texts[0])) > 10
    ids = encode_document(doc, qwen3)
    assert ids.dtype == np.int32 and ids[-1] == qwen3.end_of_text_id
    whole = qwen3.tokenizer.encode(doc.texts[0], add_special_tokens=False).ids
    assert ids[:-1].tolist() == whole
    assert qwen3.tokenizer.decode(ids[:-1].tolist()) == doc.texts[0]


def test_special_token_text_in_a_file_stays_text(qwen3):
    doc = TextDocument("code/r", CODE, "/r", ["s = '<|endoftext|>'\n"], files=["a.py"], title="r")
    ids = encode_document(doc, qwen3).tolist()
    assert ids.count(qwen3.end_of_text_id) == 1 and ids[-1] == qwen3.end_of_text_id
    assert ids[0] == qwen3.repo_name_id and ids.count(qwen3.file_sep_id) == 1


def test_repository_layout(qwen3):
    doc = TextDocument(
        "code/r", CODE, "/r", ["x = 1\n", "y = 2"], files=["a.py", "b/c.py"], title="r"
    )
    ids = encode_document(doc, qwen3).tolist()
    text = qwen3.tokenizer.decode(ids, skip_special_tokens=False)
    assert (
        text == "<|repo_name|>r\n<|file_sep|>a.py\nx = 1\n<|file_sep|>b/c.py\ny = 2\n<|endoftext|>"
    )


def test_book_gets_exactly_one_end_of_text(qwen3):
    ids = encode_document(TextDocument("book/b", BOOK, "/b", ["Hello.\n"]), qwen3)
    assert ids[-1] == qwen3.end_of_text_id and (ids == qwen3.end_of_text_id).sum() == 1


@pytest.mark.parametrize(
    "spec", ["/no/such/tokenizer.json", "./nope", "definitely not a tokenizer"]
)
def test_unknown_tokenizer(spec):
    with pytest.raises(TokenizerError, match="--tokenizer"):
        load_tokenizer(spec)


def test_invalid_tokenizer_file(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{}")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        load_tokenizer(str(bad))
