"""Book text: Project Gutenberg boilerplate removal and the title.

Project Gutenberg plain-text files wrap the book in a header (title, licence pointer, encoding,
up to a ``*** START OF THE PROJECT GUTENBERG EBOOK ... ***`` line) and a footer (an
``End of the Project Gutenberg EBook of ...`` line, the ``*** END OF ... ***`` marker and the
licence, ~350 lines). Both are removed, with a transcriber credit paragraph ("Produced by
...") right after the START marker; a file without the markers is kept whole.
"""

from __future__ import annotations

import re
from collections import Counter

_START = re.compile(r"^\s*\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK.*$", re.I | re.M)
_END = re.compile(r"^\s*\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK.*$", re.I | re.M)
_END_LINE = re.compile(r"^\s*End of (?:the )?Project Gutenberg.*$", re.I | re.M)
# A transcriber credit paragraph right after the START marker is Gutenberg's, not the author's.
_CREDIT = re.compile(
    r"\A\s*(?:Produced by|E-text prepared by|Transcribed from|This etext was)[^\n]*(?:\n[^\n]+)*\n*",
    re.I,
)
_TITLE = re.compile(r"^Title:\s*(.+)$", re.M)
_LANGUAGE = re.compile(r"^Language:\s*(.+)$", re.M)
# Credit and provenance paragraphs near the start or the end of the body (English and German
# Gutenberg releases): transcriber names, proofreading teams, "Gutenberg Projekt-DE" notes.
_CREDIT_WORDS = re.compile(
    r"gutenberg|produced by|prepared by|transcribed|proofread|volunteer|widger|pgdp\.net|"
    r"etext|e-text|ebook|scanned",
    re.I,
)
_EDGE_CHARS = 3000
# A paragraph anywhere in the body that names Project Gutenberg is a note about the release.
_PG_NAME = re.compile(r"project\s+gutenberg|gutenberg[\s-]+projek?t|projekt\s+gutenberg", re.I)
# A chapter heading: alone on its line between blank lines, at most 60 characters (tried only
# at the start of the text and after each blank line: chapter_starts).
_CHAPTER = re.compile(
    r"((?:CHAPTER|Chapter|BOOK|Book|PART|Part|STAVE|Stave|ACT|Act|SCENE|Scene|LETTER|Letter|"
    r"VOLUME|Volume|EPILOGUE|Epilogue|PROLOGUE|Prologue)\b[^\n]{0,50}"
    r"|[IVXLC]{1,7}\.(?:[ \t][^\n]{0,50})?"
    r"|(?:[1-3] )?[A-Z][a-z]+(?: [A-Z][a-z]+){0,3} \d{1,3})"
    r"(?=\n\n)"
)
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
    body = _strip_edge_credits(body.strip("\n"))
    return (body + "\n" if body else ""), True


def gutenberg_title(text: str) -> str:
    """The ``Title:`` field of a Gutenberg header, or ``""``."""
    match = _TITLE.search(text[:5000])
    return match.group(1).strip() if match else ""


def _strip_edge_credits(body: str) -> str:
    """Drop credit paragraphs in the first and last ``_EDGE_CHARS`` of a Gutenberg body."""
    paras = body.split("\n\n")
    head = 0
    used = 0
    while head < len(paras) and used < _EDGE_CHARS:
        p = paras[head]
        if p.strip() and not _CREDIT_WORDS.search(p):
            break
        used += len(p) + 2
        head += 1
    tail = len(paras)
    used = 0
    for k in range(len(paras) - 1, head - 1, -1):
        used += len(paras[k]) + 2
        if used > _EDGE_CHARS:
            break
        if "gutenberg" in paras[k].lower():
            tail = k
    kept = paras[head:tail]
    if "gutenberg" in body.lower():  # every _PG_NAME match has the word: most bodies skip this
        kept = [p for p in kept if "gutenberg" not in p.lower() or not _PG_NAME.search(p)]
    return "\n\n".join(kept).strip("\n")


# Short function words per language (archaic English included: the King James Bible has no
# header to read). A text's language is the one whose words make up the largest share of its
# first 20,000 characters' words, if that share is at least 5%.
_FUNCTION_WORDS = {
    "english": "the and of to a in that is was he it for with his not be as but unto thou thee "
    "thy hath shall ye",
    "german": "der die und in den von zu das mit sich des auf für ist im dem nicht ein eine als "
    "auch",
    "french": "le de la et les des en un une du que est pour qui dans par sur au avec il",
    "spanish": "el de la que y en los del se las por un para con una su al lo como",
    "italian": "il di che la e per un in non una sono della del le si da con gli",
    "dutch": "de het een en van in dat is op te zijn met voor niet aan er",
    "portuguese": "o de que a e do da em um para com não uma os no se na",
    "latin": "et in est non ad cum quod qui sed ut ex per quae autem enim",
}
_WORD_SETS = {lang: set(words.split()) for lang, words in _FUNCTION_WORDS.items()}
_WORD = re.compile(r"[^\W\d_]+")


def detect_language(text: str, min_share: float = 0.05) -> str:
    """The language of ``text`` by its function words (see ``_FUNCTION_WORDS``), or ``""``.

    >>> detect_language("And God said, Let there be light: and there was light.")
    'english'
    """
    words = Counter(w.lower() for w in _WORD.findall(text[:20000]))
    total = sum(words.values())
    if not total:
        return ""
    # each language's words looked up in the text's counts (~20 a language), not each of the
    # text's words in each language's set: 1.7 -> 0.95 ms for the 20,000 characters of a book
    # without a Gutenberg header (PG-19's books have none)
    shares = {lang: sum(words[w] for w in ws) / total for lang, ws in _WORD_SETS.items()}
    best = max(shares, key=shares.get)
    return best if shares[best] >= min_share else ""


def gutenberg_language(text: str) -> str:
    """The ``Language:`` field of a Gutenberg header, lower case; without a header, the
    language detected from the text (:func:`detect_language`), or ``""``."""
    match = _LANGUAGE.search(text[:5000])
    return match.group(1).strip().lower() if match else detect_language(text)


def chapter_starts(text: str) -> list[int]:
    r"""Character offsets of chapter headings: a short line such as ``CHAPTER IV.``,
    ``Chapter 12``, ``STAVE I``, ``II. The Mail`` or ``Genesis 3`` between blank lines.

    >>> chapter_starts("Intro.\n\nCHAPTER I.\n\nIt was.\n\nII. The Mail\n\nText")
    [8, 29]
    """
    starts = []
    at = 0
    while at != -1:
        if _CHAPTER.match(text, at):
            starts.append(at)
        at = text.find("\n\n", max(at - 1, 0))  # overlapping: "\n\n\n" leaves two starts
        at = at if at == -1 else at + 2
    return starts
