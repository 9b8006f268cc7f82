"""Bytes to text: binary detection, encoding detection, newline normalisation.

The rules, in order (each failure raises :class:`RejectError` with the reason in brackets):

1. ``b""`` or only whitespace after decoding                        [empty]
2. a UTF-8 / UTF-16 / UTF-32 byte-order mark decides the encoding; the BOM is stripped
3. NUL bytes in the first 8 KiB without a UTF-16/32 BOM             [binary]
4. strict UTF-8
5. UTF-16 without BOM, when every other byte of the first 8 KiB is NUL (ASCII-range text)
6. the charset a Project Gutenberg header, an HTML/XML prolog or a PEP 263 ``coding:`` line
   declares (``ISO-8859-1``...)
7. otherwise the bytes are not text we can trust                     [undecodable]

Control characters other than tab/newline/form feed in more than 1% of the characters mean
binary data that happened to decode                                   [binary]
CRLF and lone CR become LF.
"""

from __future__ import annotations

import codecs
import re

from transforms.documents import RejectError

_SNIFF = 8192
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_DECLARED = re.compile(
    rb"(?:character set encoding|charset|coding)\s*[:=]\s*[\"']?\s*([A-Za-z0-9_.:-]{3,40})",
    re.IGNORECASE,
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def _declared_encoding(head: bytes) -> str | None:
    match = _DECLARED.search(head)
    if not match:
        return None
    name = match.group(1).decode("ascii", "replace").strip("\"'").lower()
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode_text(data: bytes) -> tuple[str, str]:
    """Decode file bytes to normalised text; returns ``(text, encoding)``.

    >>> decode_text(b"\\xef\\xbb\\xbfHello\\r\\nworld\\r\\n")
    ('Hello\\nworld\\n', 'utf-8')
    """
    if not data.strip():
        raise RejectError("empty", f"{len(data)} bytes, no text")
    encoding = None
    for bom, name in _BOMS:
        if data.startswith(bom):
            data, encoding = data[len(bom) :], name
            break
    head = data[:_SNIFF]
    if encoding is None and b"\x00" in head:
        if len(head) >= 4 and head[1::2].count(0) == len(head[1::2]) and head[0::2].count(0) == 0:
            encoding = "utf-16-le"
        elif len(head) >= 4 and head[0::2].count(0) == len(head[0::2]) and head[1::2].count(0) == 0:
            encoding = "utf-16-be"
        else:
            raise RejectError("binary", "NUL bytes in the first 8 KiB")
    if encoding is None:
        try:
            text = data.decode("utf-8")
            encoding = "utf-8"
        except UnicodeDecodeError as err:
            declared = _declared_encoding(data[:65536])
            if declared is None or declared in ("utf-8", "ascii"):
                raise RejectError(
                    "undecodable",
                    f"not valid UTF-8 ({err.reason} at byte {err.start}), and no charset "
                    "declared: convert it (iconv -f latin1 -t utf-8) or declare its charset "
                    "(a Gutenberg 'Character set encoding:' line, an HTML meta charset, a "
                    "Python coding line)",
                ) from None
            try:
                text = data.decode(declared)
            except UnicodeDecodeError:
                raise RejectError(
                    "undecodable", f"not valid UTF-8 nor the declared {declared}"
                ) from None
            encoding = declared
    else:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError as err:
            raise RejectError("undecodable", f"invalid {encoding}: {err.reason}") from None
    sample = text[:_SNIFF]
    if sample and len(_CONTROL.findall(sample)) > 0.01 * len(sample):
        raise RejectError("binary", "control characters in more than 1% of the text")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise RejectError("empty", "only whitespace")
    return text, encoding
