"""Decoding, Gutenberg stripping and repository reading on real and generated files."""

import os

import pytest

from transforms.documents import RejectError
from transforms.inputs.books import strip_gutenberg
from transforms.inputs.decode import decode_text
from transforms.inputs.reading import ReadSettings, read_book
from transforms.inputs.repository import read_repository

LIMITS = ReadSettings(max_file_bytes=1 << 20)


@pytest.mark.parametrize(
    ("data", "text", "enc"),
    [
        (b"\xef\xbb\xbfa\r\nb\r\n", "a\nb\n", "utf-8"),
        ("h\u00e9\r".encode("utf-16"), "h\u00e9\n", "utf-16-le"),
        ("hello world".encode("utf-16-le"), "hello world", "utf-16-le"),
        (
            b"Character set encoding: ISO-8859-1\n\ncaf\xe9\n",
            "Character set encoding: ISO-8859-1\n\ncaf\u00e9\n",
            "iso8859-1",
        ),
    ],
)
def test_decode(data, text, enc):
    assert decode_text(data) == (text, enc)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"  \n\t ", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        (b"caf\xe9 au lait", "undecodable"),
        (b"\x01\x02\x03\x04abc" * 20, "binary"),
    ],
)
def test_decode_rejects(data, reason):
    with pytest.raises(RejectError) as err:
        decode_text(data)
    assert err.value.reason == reason


def test_real_gutenberg_books_lose_header_and_licence(books_dir):
    for path in sorted(books_dir.glob("*.txt")):
        doc = read_book(str(path), "book/x", ReadSettings())
        body = doc.texts[0]
        assert "PROJECT GUTENBERG EBOOK" not in body.upper().replace("E-BOOK", "EBOOK"), path.name
        assert "Project Gutenberg License" not in body and "\r" not in body and "\ufeff" not in body
    moby = read_book(str(books_dir / "melville-moby-dick.txt"), "book/m", ReadSettings())
    assert moby.title.startswith("Moby Dick")
    assert (
        moby.texts[0].lstrip().startswith("MOBY-DICK;")
        or "Call me Ishmael" in moby.texts[0][:20000]
    )
    kjv = read_book(str(books_dir / "kjv-bible.txt"), "book/k", ReadSettings())
    raw = (books_dir / "kjv-bible.txt").read_text()
    assert kjv.texts[0].strip() == raw.strip()  # no Gutenberg markers: kept whole


def test_strip_without_markers_keeps_text():
    assert strip_gutenberg("just a book\n") == ("just a book\n", False)


def test_repository_reading_rejects_bad_files_and_keeps_good_ones(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "a.py").write_text("import os\n")
    (repo / "b.py").write_text("x = 1\n")
    (repo / "empty.py").write_text("")
    (repo / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (repo / "fake.txt").write_bytes(b"\x00\x01\x02binary\x00" * 50)
    (repo / "big.txt").write_text("x" * (2 << 20))
    (repo / "__pycache__").mkdir()
    (repo / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\x00" * 10)
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET outside the root\n")
    os.symlink(secret, repo / "link.txt")
    os.symlink(tmp_path / "missing", repo / "dangling.txt")
    doc, rejects = read_repository(str(repo), "code/repo", "repo", LIMITS)
    assert doc.files == ["b.py", "pkg/a.py"]
    assert "TOP SECRET" not in "".join(doc.texts)
    reasons = {os.path.basename(r.path): r.reason for r in rejects}
    assert reasons == {
        "empty.py": "empty",
        "logo.png": "binary",
        "fake.txt": "binary",
        "big.txt": "too_large",
        "__pycache__": "skipped_dir",
        "link.txt": "symlink",
        "dangling.txt": "broken_symlink",
    }


def test_empty_repository_is_a_reject(tmp_path):
    (tmp_path / "r").mkdir()
    doc, rejects = read_repository(str(tmp_path / "r"), "code/r", "r", LIMITS)
    assert doc is None and [r.reason for r in rejects] == ["empty"]
