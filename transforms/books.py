"""Book text: Project Gutenberg boilerplate removal and the title.

Project Gutenberg plain-text files wrap the book in a header (title, licence pointer, encoding,
up to a ``*** START OF THE PROJECT GUTENBERG EBOOK ... ***`` line) and a footer (an
``End of the Project Gutenberg EBook of ...`` line, the ``*** END OF ... ***`` marker and the
licence, ~350 lines). Both are removed, with a transcriber credit paragraph ("Produced by
...") right after the START marker; a file without the markers is kept whole.
"""

from __future__ import annotations

import re

_START = re.compile(r"^\s*\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK.*$", re.I | re.M)
_END = re.compile(r"^\s*\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK.*$", re.I | re.M)
_END_LINE = re.compile(r"^\s*End of (?:the )?Project Gutenberg.*$", re.I | re.M)
# A transcriber credit paragraph right after the START marker is Gutenberg's, not the author's.
_CREDIT = re.compile(
    r"\A\s*(?:Produced by|E-text prepared by|Transcribed from|This etext was)[^\n]*(?:\n[^\n]+)*\n*",
    re.I,
)
_TITLE = re.compile(r"^Title:\s*(.+)$", re.M)
# How far before the END marker the "End of the Project Gutenberg EBook" line may sit.
_END_LINE_WINDOW = 1000


def strip_gutenberg(text: str) -> tuple[str, bool]:
    """Return ``(body, stripped)``: the book without Gutenberg header/footer.

    >>> strip_gutenberg("Title: X\\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\\nBody.\\n"
    ...                 "*** END OF THE PROJECT GUTENBERG EBOOK X ***\\nLicence")
    ('Body.\\n', True)
    """
    start = _START.search(text)
    end = _END.search(text, start.end() if start else 0)
    if not start and not end:
        return text, False
    lo = start.end() + 1 if start else 0
    hi = end.start() if end else len(text)
    if end:
        tail = text[max(lo, hi - _END_LINE_WINDOW) : hi]
        lines = list(_END_LINE.finditer(tail))
        if lines:
            hi = max(lo, hi - _END_LINE_WINDOW) + lines[-1].start()
    body = _CREDIT.sub("", text[lo:hi]) if start else text[lo:hi]
    body = body.strip("\n")
    return (body + "\n" if body else ""), True


def gutenberg_title(text: str) -> str:
    """The ``Title:`` field of a Gutenberg header, or ``""``."""
    match = _TITLE.search(text[:5000])
    return match.group(1).strip() if match else ""
