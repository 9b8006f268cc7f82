"""JavaScript / TypeScript module specifiers: a scanner that removes comments first.

Comments are replaced by spaces (newlines kept) while string, template and regular-expression
literals are stepped over, so ``import { // eslint-disable-line`` spread over several lines,
or ``/* ... */`` between ``import`` and ``from``, no longer hide an import, and an import
written inside a comment gives none. Then these forms are read:

- ``import x from 's'``, ``import {a, b as c} from 's'``, ``import * as n from 's'``,
  ``import 's'``, ``import type {T} from 's'``, ``export {a} from 's'``, ``export * from 's'``;
- ``import('s')``, ``require('s')`` (also ``import x = require('s')``), with a plain template
  literal as well;
- TypeScript's ``/// <reference path="s" />``.

A regular expression literal is told from a division by the token before the ``/`` (an operator,
an opening bracket, ``return``...), the rule every JavaScript tokenizer without a parser uses.
Specifiers inside plain strings are still matched (``"import a from './b'"`` in a string): the
cost is an extra edge, never a lost file. One pass, about 20 MB/s.
"""

from __future__ import annotations

import posixpath
import re

_NEXT = re.compile(r"[/'\"`]")
_REGEX_AFTER = set("(,=:[!&|?{};+-*%<>~^")
_REGEX_KEYWORD = re.compile(
    r"(?:^|[^\w$.])(?:return|typeof|case|do|else|in|of|void|throw|delete|new|yield|await)$"
)
_NOT_NEWLINE = re.compile(r"[^\n]")
_SPEC = re.compile(
    r"""(?<![\w$.])(?:import|export)\s*(?:[\w$*{}\s,]*?\bfrom\s*)?(['"])([^'"\n]+)\1"""
    r"""|(?<![\w$.])(?:require|import)\s*\(\s*(['"`])([^'"`\n$]+)\3\s*[,)]"""
)
_REFERENCE = re.compile(
    r"""^[ \t]*///[ \t]*<reference[ \t]+path[ \t]*=[ \t]*(['"])([^'"\n]+)\1""", re.M
)


def _literal_end(text: str, start: int, quote: str) -> int:
    """The index after the string or template literal that opens at ``start``."""
    i, n = start + 1, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == quote:
            return i + 1
        if c == "\n" and quote != "`":
            return i  # an unterminated string ends at the line (JSX text, broken files)
        i += 1
    return n


def _regex_end(text: str, start: int) -> int:
    """The index after the regular-expression literal (and its flags) opening at ``start``."""
    i, n, in_class = start + 1, len(text), False
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "\n":
            return i
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "/":
            i += 1
            while i < n and (text[i].isalnum() or text[i] in "_$"):
                i += 1
            return i
        i += 1
    return n


def strip_comments(text: str) -> str:
    """``text`` with its comments blanked (same length, same line numbers).

    >>> strip_comments("import { // note\\n a } from './a' /* x */")
    "import {        \\n a } from './a'        "
    """
    out: list[str] = []
    pos, n = 0, len(text)
    before = ""  # the code just before the current position (for the regex-or-division rule)
    while pos < n:
        m = _NEXT.search(text, pos)
        if m is None:
            out.append(text[pos:])
            break
        k = m.start()
        if k > pos:
            out.append(text[pos:k])
            if text[pos:k].strip():
                before = text[max(pos, k - 16) : k].rstrip()
        c = text[k]
        nxt = text[k + 1 : k + 2]
        if c == "/" and nxt in ("/", "*"):
            end = text.find("\n", k) if nxt == "/" else text.find("*/", k + 2)
            end = n if end < 0 else (end if nxt == "/" else end + 2)
            out.append(_NOT_NEWLINE.sub(" ", text[k:end]))
        elif c == "/":
            last = before[-1:]
            regex = not before or last in _REGEX_AFTER or bool(_REGEX_KEYWORD.search(before))
            end = _regex_end(text, k) if regex else k + 1
            out.append(text[k:end])
            before = "x" if regex else "/"  # a regex is an operand; after "/" comes one
        else:
            end = _literal_end(text, k, c)
            out.append(text[k:end])
            before = "x"
        pos = end
    return "".join(out)


def js_specifiers(text: str) -> list[str]:
    """Every module specifier a JavaScript / TypeScript file names, in order."""
    # a reference path is relative even without "./"
    specs = [posixpath.join(".", m.group(2)) for m in _REFERENCE.finditer(text)]
    if not any(w in text for w in ("import", "export", "require")):
        return specs
    for m in _SPEC.finditer(strip_comments(text)):
        specs.append(m.group(2) or m.group(4))
    return specs


_TS_IMPORTER = (".ts", ".tsx", ".mts", ".cts")  # ".d.ts" included
_NODE_ORDER = (".js", ".mjs", ".cjs", ".jsx", ".json", ".ts", ".tsx", ".d.ts", ".mts", ".cts")
_TS_ORDER = (".ts", ".tsx", ".d.ts", ".mts", ".cts", ".js", ".jsx", ".mjs", ".cjs", ".json")
_TS_FOR_JS = {
    ".js": (".ts", ".tsx", ".d.ts"),
    ".jsx": (".tsx", ".ts", ".d.ts"),
    ".mjs": (".mts", ".d.mts"),
    ".cjs": (".cts", ".d.cts"),
}


def candidate_paths(importer: str, spec: str) -> list[str]:
    """The repository paths a relative specifier may name, in the order the importer's
    toolchain tries them: Node's for JavaScript (the file as written, ``.js`` ... , then
    ``index.*``), TypeScript's for ``.ts`` files (``./x.js`` is ``x.ts`` or ``x.d.ts`` first,
    and ``./x`` prefers ``x.ts`` to a compiled ``x.js`` beside it). Empty for a specifier
    that leaves the repository.

    >>> candidate_paths("src/a.ts", "./b.js")[:4]
    ['src/b.ts', 'src/b.tsx', 'src/b.d.ts', 'src/b.js']
    >>> candidate_paths("lib/a.js", "./b")[:3]
    ['lib/b', 'lib/b.js', 'lib/b.mjs']
    """
    base = posixpath.normpath(posixpath.join(posixpath.dirname(importer), spec))
    if base == ".." or base.startswith("../"):
        return []
    ts = importer.endswith(_TS_IMPORTER)
    order = _TS_ORDER if ts else _NODE_ORDER
    stem, ext = posixpath.splitext(base)
    mapped = [stem + e for e in _TS_FOR_JS.get(ext, ())]
    out = mapped if ts else []
    out += [base, *(base + e for e in order), *(f"{base}/index{e}" for e in order)]
    return out if ts else out + mapped
