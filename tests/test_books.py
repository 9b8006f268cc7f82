"""Books as users have them: Latin-1 text, HTML and EPUB, chapters, Gutenberg credits."""

from __future__ import annotations

import html
import re
import zipfile
from pathlib import Path

import pytest

from tests.conftest import STDLIB
from transforms.documents import RejectError
from transforms.inputs.books import chapter_starts, strip_gutenberg
from transforms.inputs.markup import html_to_text
from transforms.inputs.reading import ReadSettings, read_book

LIMITS = ReadSettings()


def _words(text: str) -> list[str]:
    return re.sub(r"\s+", " ", text).strip().split(" ")


def _as_html(raw_txt: str, charset: str = "utf-8") -> str:
    paras = [p for p in raw_txt.split("\n\n") if p.strip()]
    body = "\n".join(f"<p>{html.escape(p)}</p>" for p in paras)
    return (
        f'<!DOCTYPE html><html><head><meta charset="{charset}"><title>T</title>'
        f"<style>p {{ margin: 0 }}</style><script>var x = '<p>not text</p>';</script></head>"
        f"<body>{body}</body></html>"
    )


def test_latin1_book_declared_in_its_gutenberg_header(tmp_path, books_dir):
    raw = (books_dir / "flaubert-madame-bovary.txt").read_text(encoding="utf-8")
    assert "é" in raw
    latin = raw.replace("UTF-8", "ISO-8859-1")
    path = tmp_path / "bovary.txt"
    path.write_bytes(latin.encode("latin-1", "replace"))
    doc = read_book(str(path), "book/bovary", LIMITS)
    assert "Emma" in doc.texts[0] and "é" in doc.texts[0] and "\ufffd" not in doc.texts[0]
    assert doc.language == "french"


def test_gutenberg_html_book_reads_like_its_text_edition(tmp_path, books_dir):
    raw = (books_dir / "shelley-frankenstein.txt").read_text(encoding="utf-8")
    path = tmp_path / "frankenstein.html"
    path.write_text(_as_html(raw), encoding="utf-8")
    from_html = read_book(str(path), "book/f", LIMITS)
    from_txt = read_book(str(books_dir / "shelley-frankenstein.txt"), "book/f", LIMITS)
    assert _words(from_html.texts[0]) == _words(from_txt.texts[0])
    assert "not text" not in from_html.texts[0] and "margin" not in from_html.texts[0]
    assert len(from_html.chapters) == len(from_txt.chapters) > 20
    assert from_html.title.startswith("Frankenstein") and from_txt.title == "Frankenstein"


def _epub(path, chapters: list[tuple[str, str]], spine: list[int], opf: str | None = None):
    opf_items = "".join(
        f'<item id="c{i}" href="text/ch{i}.xhtml" media-type="application/xhtml+xml"/>'
        for i in range(len(chapters))
    )
    opf_spine = "".join(f'<itemref idref="c{i}"/>' for i in spine)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mimetype", "application/epub+zip")
        zf.writestr(
            "META-INF/container.xml",
            '<?xml version="1.0"?><container version="1.0" '
            'xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles>'
            '<rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>'
            "</rootfiles></container>",
        )
        zf.writestr(
            "OEBPS/content.opf",
            opf
            or '<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="3.0">'
            '<metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>The Book</dc:title>'
            f"</metadata><manifest>{opf_items}</manifest><spine>{opf_spine}</spine></package>",
        )
        for i, (title, text) in enumerate(chapters):
            zf.writestr(
                f"OEBPS/text/ch{i}.xhtml",
                f'<html xmlns="http://www.w3.org/1999/xhtml"><body><h2>{title}</h2>'
                f"<p>{html.escape(text)}</p></body></html>",
            )


def test_epub_follows_its_spine_not_file_order(tmp_path):
    path = tmp_path / "book.epub"
    chapters = [("CHAPTER III.", "Third."), ("CHAPTER I.", "First."), ("CHAPTER II.", "Second.")]
    _epub(path, chapters, spine=[1, 2, 0])
    doc = read_book(str(path), "book/b", LIMITS)
    assert doc.title == "The Book"
    assert doc.texts[0] == (
        "CHAPTER I.\n\nFirst.\n\nCHAPTER II.\n\nSecond.\n\nCHAPTER III.\n\nThird.\n"
    )
    assert len(doc.chapters) == 3


def test_epub_with_escaping_spine_item_is_rejected(tmp_path):
    path = tmp_path / "evil.epub"
    evil_opf = (
        '<package xmlns="http://www.idpf.org/2007/opf"><manifest>'
        '<item id="a" href="../../../etc/passwd"/></manifest><spine><itemref idref="a"/>'
        "</spine></package>"
    )
    _epub(path, [("CHAPTER I.", "x")], spine=[0], opf=evil_opf)
    with pytest.raises(RejectError) as err:
        read_book(str(path), "book/e", LIMITS)
    assert err.value.reason in ("path_escape", "bad_epub")


def test_not_an_epub_is_a_reject(tmp_path):
    path = tmp_path / "x.epub"
    path.write_bytes(b"plain text pretending")
    with pytest.raises(RejectError, match="bad_epub"):
        read_book(str(path), "book/x", LIMITS)


def test_html_blocks_entities_and_preformatted_text():
    text = html_to_text(
        "<body><h1>Title</h1><p>a &amp; b<br/>c</p><pre>  x = 1\n  y = 2</pre><!-- c --></body>"
    )
    assert text == "Title\n\na & b\nc\n\n  x = 1\n  y = 2\n"


def test_gutenberg_credits_in_english_and_german_are_stripped(books_dir):
    for name, credit in (
        ("tolstoy-war-and-peace", "Anonymous Volunteer"),
        ("goethe-faust-part-one", "Gutenberg Projekt-DE"),
        ("dickens-a-tale-of-two-cities", "Produced by"),
        ("melville-moby-dick", "Project Gutenberg"),
    ):
        raw = (books_dir / f"{name}.txt").read_text(encoding="utf-8")
        assert credit in raw
        body, stripped = strip_gutenberg(raw)
        assert stripped and credit not in body and "gutenberg" not in body.lower(), name


def test_chapter_headings_of_real_books(books_dir):
    def first_headings(name, k=3):
        body, _ = strip_gutenberg((books_dir / f"{name}.txt").read_text(encoding="utf-8"))
        return [body[c:].split("\n", 1)[0] for c in chapter_starts(body)][:k]

    assert first_headings("austen-pride-and-prejudice") == ["Chapter 1", "Chapter 2", "Chapter 3"]
    assert first_headings("carroll-alices-adventures-in-wonderland", 1) == [
        "CHAPTER I. Down the Rabbit-Hole"
    ]
    assert first_headings("kjv-bible", 2) == ["Genesis 2", "Genesis 3"]
    assert first_headings("doyle-adventures-of-sherlock-holmes", 2) == ["I.", "II."]


def test_language_without_a_gutenberg_header_is_detected(books_dir):
    from transforms.inputs.books import detect_language, gutenberg_language

    kjv = (books_dir / "kjv-bible.txt").read_text()
    assert "Language:" not in kjv[:5000]  # no header: archaic English must still be found
    assert gutenberg_language(kjv) == "english"
    assert detect_language("Und Gott sprach: Es werde Licht! und es ward Licht.") == "german"
    assert detect_language("Et Dieu dit: Que la lumière soit! Et la lumière fut.") == "french"
    assert detect_language("def f(x):\n    return x + 1\n") == ""
    assert detect_language("") == ""


def test_language_detection_follows_its_definition_on_real_text(books_dir):
    """A text's language is the one whose function words make up the largest share of the
    words of its first 20,000 characters, if at least 5%. Checked against that definition,
    written out here, on slices of every shared book (several languages) and of the standard
    library's code: the detection counts the words once instead of testing every word against
    every language (~4 ms a header-less book before)."""
    from transforms.inputs.books import _FUNCTION_WORDS, detect_language

    def by_definition(text):
        words = [w.lower() for w in re.findall(r"[^\W\d_]+", text[:20000])]
        if not words:
            return ""
        shares = {
            lang: sum(w in set(fw.split()) for w in words) / len(words)
            for lang, fw in _FUNCTION_WORDS.items()
        }
        best = max(shares, key=shares.get)
        return best if shares[best] >= 0.05 else ""

    texts = []
    for path in sorted(books_dir.glob("*.txt")):
        text = path.read_text(errors="replace")
        texts += [text[k : k + 30000] for k in range(0, len(text), len(text) // 4 + 1)]
    texts += [p.read_text(errors="replace") for p in sorted(Path(STDLIB, "json").glob("*.py"))]
    found = {by_definition(t) for t in texts}
    assert {"english", "german", ""} <= found, found  # the books' languages, and code
    for text in texts:
        assert detect_language(text) == by_definition(text)


def test_a_book_name_in_two_folders_beside_its_suffixed_id_gets_ids_of_its_own(tmp_path, books_dir):
    """``a.txt`` in two --books folders and an ``a~2.txt`` beside one of them: the clash's
    ``~2`` was the id of the third file too, and the run stopped on "duplicate document id"."""
    from pipeline.discover import discover

    text = (books_dir / "shelley-frankenstein.txt").read_text()
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    d1.mkdir()
    d2.mkdir()
    (d1 / "a.txt").write_text(text[:20000])
    (d2 / "a.txt").write_text(text[20000:40000])
    (d1 / "a~2.txt").write_text(text[40000:60000])
    sources, rejects = discover(books=[str(d1), str(d2)])
    ids = {s.doc_id: s.path for s in sources}
    assert rejects == [] and sorted(ids) == ["book/a", "book/a~2", "book/a~3"]
    # the file named a~2 keeps its own name's id; the clash takes the next free one
    assert ids["book/a"] == str(d1 / "a.txt") and ids["book/a~2"] == str(d1 / "a~2.txt")
    assert ids["book/a~3"] == str(d2 / "a.txt")
