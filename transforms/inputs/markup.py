"""Books as HTML and EPUB: markup to plain text, EPUB reading order from its spine.

``html_to_text`` keeps what a reader sees: text of the body, one blank line between blocks
(paragraphs, headings, list items, table rows), ``<br>`` as a newline, ``<pre>`` verbatim;
``<script>``, ``<style>``, ``<head>`` and comments are dropped; entities are decoded.

``epub_text`` reads ``META-INF/container.xml`` -> the package document (OPF) -> its ``<spine>``,
and converts each spine item in that order. The EPUB is a zip: members are read in memory with
the same path and size checks as repository archives (no member path is joined to a folder).
"""

from __future__ import annotations

import posixpath
import re
import zipfile
from html.parser import HTMLParser
from io import BytesIO
from xml.etree import ElementTree

from transforms.documents import RejectError
from transforms.inputs.archives import MAX_RATIO, safe_member_name
from transforms.inputs.decode import decode_text

_BLOCK = frozenset(
    [
        "p",
        "div",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "li",
        "ul",
        "ol",
        "tr",
        "table",
        "section",
        "article",
        "blockquote",
        "dd",
        "dt",
        "dl",
        "figure",
        "figcaption",
        "header",
        "footer",
        "hr",
        "pre",
        "title",
    ]
)
_SKIP = frozenset(["script", "style", "head", "noscript", "template", "svg", "math"])
_SPACES = re.compile(r"[ \t\r\n\f\v]+")
_BLANKS = re.compile(r"\n{3,}")


class _TextParser(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.pre = 0

    def handle_starttag(self, tag, attrs):
        if tag in _SKIP:
            self.skip += 1
        elif tag == "br":
            self.out.append("\n")
        elif tag in _BLOCK:
            self.out.append("\n\n")
            self.pre += tag == "pre"

    def handle_startendtag(self, tag, attrs):
        if tag == "br":
            self.out.append("\n")
        elif tag == "hr":
            self.out.append("\n\n")

    def handle_endtag(self, tag):
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in _BLOCK:
            self.out.append("\n\n")
            self.pre -= tag == "pre" and self.pre > 0

    def handle_data(self, data):
        if self.skip:
            return
        self.out.append(data if self.pre else _SPACES.sub(" ", data))


def html_to_text(html: str) -> str:
    """Visible text of an HTML document, blocks separated by one blank line.

    >>> html_to_text("<html><head><title>T</title></head><body><h1>I</h1><p>A&amp;B<br>c</p>")
    'I\\n\\nA&B\\nc\\n'
    """
    parser = _TextParser()
    parser.feed(html)
    parser.close()
    text = "".join(parser.out)
    # Collapsed runs leave one space at line starts; two or more come from <pre>, keep them.
    lines = [
        (line[1:] if line.startswith(" ") and not line.startswith("  ") else line).rstrip(" ")
        for line in text.split("\n")
    ]
    text = _BLANKS.sub("\n\n", "\n".join(lines)).strip("\n")
    return text + "\n" if text else ""


def _read_member(zf: zipfile.ZipFile, name: str, max_bytes: int) -> bytes:
    safe = safe_member_name(name)
    if safe is None:
        raise RejectError("path_escape", f"EPUB member {name!r} leaves the archive")
    try:
        info = zf.getinfo(safe)
    except KeyError:
        raise RejectError("bad_epub", f"missing member {safe}") from None
    if info.file_size > max_bytes:
        raise RejectError("too_large", f"EPUB member {safe}: {info.file_size} bytes")
    if info.file_size > 2**20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise RejectError("decompression_bomb", f"EPUB member {safe} expands {info.file_size}")
    with zf.open(info) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise RejectError("too_large", f"EPUB member {safe} larger than declared")
    return data


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def epub_text(data: bytes, max_bytes: int) -> tuple[str, str]:
    """``(text, title)`` of an EPUB file's spine, in reading order; raises RejectError."""
    try:
        zf = zipfile.ZipFile(BytesIO(data))
    except zipfile.BadZipFile as err:
        raise RejectError("bad_epub", f"not a zip archive: {err}") from None
    with zf:
        try:
            container = ElementTree.fromstring(
                _read_member(zf, "META-INF/container.xml", max_bytes)
            )
            rootfile = next(e for e in container.iter() if _local(e.tag) == "rootfile")
            opf_path = rootfile.attrib["full-path"]
            opf = ElementTree.fromstring(_read_member(zf, opf_path, max_bytes))
        except (ElementTree.ParseError, StopIteration, KeyError) as err:
            raise RejectError("bad_epub", f"no readable package document: {err!r}") from None
        base = posixpath.dirname(opf_path)
        manifest = {
            e.attrib.get("id"): e.attrib.get("href", "")
            for e in opf.iter()
            if _local(e.tag) == "item"
        }
        spine = [e.attrib.get("idref") for e in opf.iter() if _local(e.tag) == "itemref"]
        title = next((e.text or "" for e in opf.iter() if _local(e.tag) == "title"), "")
        parts = []
        for idref in spine:
            href = manifest.get(idref)
            if not href:
                continue
            member = posixpath.normpath(posixpath.join(base, href.split("#")[0]))
            text, _ = decode_text(_read_member(zf, member, max_bytes))
            parts.append(html_to_text(text))
    body = "\n".join(p for p in parts if p.strip())
    if not body.strip():
        raise RejectError("empty", "EPUB spine holds no text")
    return body, title.strip()
