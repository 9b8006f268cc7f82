"""Tokenizer loading and document encoding.

``load_tokenizer(spec)`` accepts what ``--tokenizer`` accepts: ``None`` (the bundled Qwen3
tokenizer), a ``tokenizer.json`` file, a folder holding Hugging Face tokenizer files, or a Hub id
(needs network, or a filled HF cache). Tokenizers never execute code from the model repository
(``trust_remote_code`` only with ``--trust-remote-code``).

Encoding a document:

- text is cut into chunks of about 64 KiB, each ending after a run of newlines that is followed
  by a non-space character, and the chunks go through one ``encode_batch`` call (Rust threads).
  For byte-level BPE tokenizers with GPT-2/Llama-3/Qwen pre-tokenization no pre-token crosses
  such a cut, so the ids equal those of one ``encode`` of the whole text (tested on a real book);
- special-token strings *inside* the text (a source file that mentions ``<|endoftext|>``) are
  encoded as plain text, never as control tokens;
- a repository becomes ``<|repo_name|>name\\n`` then ``<|file_sep|>path\\ncontent`` per file
  (the Qwen2.5-Coder repository format) when the tokenizer has those tokens, else plain-text
  headers; every document ends with the end-of-text token (``<|endoftext|>`` for Qwen3, not the
  chat ``eos_token`` ``<|im_end|>``);
- a tokenizer whose own post-processor adds a beginning-of-sequence token (Llama 3's
  ``<|begin_of_text|>``, Mistral's ``<s>``, Gemma's ``<bos>``) gets it at the start of every
  document, as its base models expect: the tokenizer's convention, read from what
  ``encode(text, add_special_tokens=True)`` puts before the text. It counts in ``n_tokens``
  and the manifest records it (``bos``, ``bos_ids``). Qwen3 adds none.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from transforms.documents import CODE, TextDocument
from transforms.hub import hub_problem, looks_like_hub_id
from transforms.samples.windowing import window_document

BUNDLED = "bundled:qwen3"
CHUNK_CHARS = 65536
# Chunks per tokenizer call. A call's Encoding objects hold ~50 bytes per token beside the
# ids (token strings, offsets, masks) until the ids are copied out: one call for a 16 MB
# document held 240 MB more than the ids (measured), 64 chunks of 64 KiB ~40 MB whatever the
# document's size, at the same speed; and 64 still give 16 tokenizer threads 4 chunks each.
ENCODE_GROUP = 64
# Candidates for the end-of-text token, most specific first: Qwen/GPT-2, Llama 3, Mistral/Llama 2, Gemma.
END_OF_TEXT_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|end|>")
_CUT = re.compile(r"\n(?=\S)")


class TokenizerError(ValueError):
    """The ``--tokenizer`` value cannot be loaded or lacks what the pipeline needs."""


@dataclass
class LoadedTokenizer:
    tokenizer: Tokenizer
    name: str
    sha256: str
    end_of_text: str
    end_of_text_id: int
    file_sep_id: int | None
    repo_name_id: int | None
    bos_ids: tuple[int, ...] = ()  # what the tokenizer's post-processor puts before a text
    _newline: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def newline_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """Per token id: does its text end a line (``\\n``), does it end a blank line
        (``\\n`` then only whitespace before an earlier ``\\n``)? Built once, ~0.5 s."""
        if self._newline is None:
            n = self.vocab_size
            # one id at a time, not decode_batch: the pool's server and the head start build
            # these tables before they fork, and a process that has used the tokenizer's
            # thread pool forks children that encode on one thread (or, with
            # TOKENIZERS_PARALLELISM=true, hang); as fast (0.10 s against 0.12 for Qwen3)
            decode = self.tokenizer.decode
            texts = [decode([i], skip_special_tokens=False) for i in range(n)]
            line = np.zeros(n, bool)
            para = np.zeros(n, bool)
            for i, t in enumerate(texts):
                if t.endswith("\n"):
                    line[i] = True
                    para[i] = t.rstrip("\n") != t[:-1] or "\n" in t[:-1].rstrip(" \t\r")[-1:]
            self._newline = (line, para)
        return self._newline

    def describe(self) -> dict:
        return {
            "name": self.name,
            "vocab_size": self.vocab_size,
            "sha256": self.sha256,
            "end_of_text": self.end_of_text,
            "end_of_text_id": self.end_of_text_id,
            "file_sep_id": self.file_sep_id,
            "repo_name_id": self.repo_name_id,
            **(
                {
                    "bos": "".join(self.tokenizer.id_to_token(i) for i in self.bos_ids),
                    "bos_ids": list(self.bos_ids),
                }
                if self.bos_ids
                else {}
            ),
        }


def _bundled_json() -> str:
    data = resources.files("transforms").joinpath("assets/qwen3-tokenizer.json.xz").read_bytes()
    return lzma.decompress(data).decode("utf-8")


def _config_eos(folder: Path) -> str | None:
    cfg = folder / "tokenizer_config.json"
    if not cfg.is_file():
        return None
    try:
        eos = json.loads(cfg.read_text("utf-8")).get("eos_token")
    except (OSError, ValueError):
        return None
    if isinstance(eos, dict):
        eos = eos.get("content")
    return eos if isinstance(eos, str) else None


def _from_transformers(spec: str, trust_remote_code: bool = False) -> str:
    try:
        from transformers import AutoTokenizer
    except ImportError as err:
        raise TokenizerError(
            f"--tokenizer {spec}: no tokenizer.json there, and loading other tokenizer formats "
            "needs `pip install transformers`"
        ) from err
    try:
        tok = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except Exception as err:  # transformers raises OSError, ValueError, HF errors...
        raise TokenizerError(f"--tokenizer {spec}: cannot load it ({err})") from err
    if not getattr(tok, "is_fast", False):
        raise TokenizerError(
            f"--tokenizer {spec}: only fast (tokenizers-backed) tokenizers are supported"
        )
    return tok.backend_tokenizer.to_str()


def _check_hub_reachable(repo_id: str) -> None:
    """A Hub id that is neither cached nor reachable fails in about two seconds."""
    problem = hub_problem(repo_id, ("tokenizer.json", "tokenizer_config.json"))
    if problem:
        raise TokenizerError(
            f"--tokenizer {repo_id}: {problem}; pass a local path (a tokenizer.json file or a "
            "folder of tokenizer files), or download it once where the Hub is reachable and set "
            "HF_HUB_OFFLINE=1"
        )


# Tokenizers loaded in this process, by (name, sha256 of tokenizer.json, eos hint): parsing
# Qwen3's 11 MB tokenizer.json takes ~0.4 s, and the encoder is thread-safe and never changed.
_LOADED: dict[tuple, LoadedTokenizer] = {}
# The same, by what a local spec's files are on disk (path, inode, size, mtime of
# tokenizer.json and of tokenizer_config.json): found again without reading and hashing the
# 11 MB (0.04 s; each worker's tokenize step loads the tokenizer its server loaded).
_BY_FILES: dict[tuple, LoadedTokenizer] = {}


def _files_key(spec: str | None) -> tuple | None:
    """What identifies a local ``--tokenizer`` on disk, or None (the bundled one, a Hub id, a
    folder without tokenizer.json: looked up by content only)."""
    if spec in (None, "", BUNDLED):
        return None
    path = Path(spec).expanduser()
    files = [path, path.parent / "tokenizer_config.json"]
    if path.is_dir():
        files = [path / "tokenizer.json", path / "tokenizer_config.json"]
    key: list = [str(spec)]
    for i, f in enumerate(files):
        try:
            st = f.stat()
        except (OSError, ValueError):  # ValueError: a NUL in the path
            if i == 0:
                return None
            key.append(None)
            continue
        key.append((str(f.resolve()), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(key)


# One load at a time in a process: a Dask worker's warm-up (pipeline.runners) and the head
# start's first task on it (pipeline.head_start) ask at once, and the second waits for the
# first's parse instead of parsing again. A new lock in a forked child (a thread of the parent
# may have held it at the fork).
_LOADING = threading.Lock()


def _new_lock() -> None:
    global _LOADING
    _LOADING = threading.Lock()


os.register_at_fork(after_in_child=_new_lock)


def load_tokenizer(spec: str | None, trust_remote_code: bool = False) -> LoadedTokenizer:
    """Load ``--tokenizer``; raises :class:`TokenizerError` with a message naming the flag.

    Code from a model repository runs only with ``trust_remote_code=True``
    (``--trust-remote-code``); the network is used only for a Hub id."""
    files_key = _files_key(spec)
    if files_key in _BY_FILES:
        return _BY_FILES[files_key]
    with _LOADING:
        return _load(spec, trust_remote_code, files_key)


def _load(spec: str | None, trust_remote_code: bool, files_key: tuple | None) -> LoadedTokenizer:
    if files_key in _BY_FILES:  # loaded by the thread this one waited for
        return _BY_FILES[files_key]
    eos_hint = None
    if spec in (None, "", BUNDLED):
        name, text = BUNDLED, _bundled_json()
        eos_hint = "<|endoftext|>"
    else:
        path = Path(spec).expanduser()
        name = str(spec)
        if path.is_file():
            text = path.read_text("utf-8")
            eos_hint = _config_eos(path.parent)
        elif path.is_dir():
            if (path / "tokenizer.json").is_file():
                text = (path / "tokenizer.json").read_text("utf-8")
            else:
                text = _from_transformers(str(path), trust_remote_code)
            eos_hint = _config_eos(path)
        elif path.exists() or "/" not in spec.strip("/") and spec.startswith((".", "/", "~")):
            raise TokenizerError(f"--tokenizer {spec}: not a tokenizer.json file or folder")
        elif looks_like_hub_id(spec, ("tokenizer.json", "tokenizer_config.json")):
            _check_hub_reachable(spec)
            text = _from_transformers(spec, trust_remote_code)  # a Hub id: Qwen/Qwen3-8B
        else:
            raise TokenizerError(
                f"--tokenizer {spec}: no such file or folder, and not a Hub id (owner/name)"
            )
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    key = (name, sha, eos_hint)
    if key in _LOADED:  # the driver checked it, then a DoFn in the same process loads it again
        if files_key is not None:
            _BY_FILES[files_key] = _LOADED[key]
        return _LOADED[key]
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as err:
        raise TokenizerError(f"--tokenizer {spec}: not a valid tokenizer.json ({err})") from err
    tokenizer.encode_special_tokens = True  # text that spells a special token stays text
    eos = None
    for cand in END_OF_TEXT_CANDIDATES:
        if tokenizer.token_to_id(cand) is not None:
            eos = cand
            break
    if eos is None and eos_hint and tokenizer.token_to_id(eos_hint) is not None:
        eos = eos_hint
    if eos is None:
        raise TokenizerError(
            f"--tokenizer {spec}: no end-of-text token found (looked for "
            f"{', '.join(END_OF_TEXT_CANDIDATES)} and tokenizer_config.json's eos_token)"
        )
    loaded = LoadedTokenizer(
        bos_ids=_bos_ids(tokenizer),
        tokenizer=tokenizer,
        name=name,
        sha256=sha,
        end_of_text=eos,
        end_of_text_id=tokenizer.token_to_id(eos),
        file_sep_id=tokenizer.token_to_id("<|file_sep|>"),
        repo_name_id=tokenizer.token_to_id("<|repo_name|>"),
    )
    _LOADED[key] = loaded
    if files_key is not None:
        _BY_FILES[files_key] = loaded
    del text  # the 11 MB of JSON, and what parsing it left free on the C heap:
    _trim_heap()  # ~120 MB for Qwen3, in this process and in every process forked from it
    return loaded


def _trim_heap() -> None:
    """Give the C heap's free memory back to the system (glibc's ``malloc_trim``; nothing
    elsewhere). Parsing a tokenizer.json leaves ~120 MB free but mapped, which a process
    forked afterwards (a pooled worker, a head-start helper) counts, and copies as it reuses
    it."""
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def _bos_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
    """The ids the tokenizer's post-processor puts before a text (its BOS convention)."""
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a", add_special_tokens=True).ids
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return tuple(full[:start])
    return ()


def chunk_text(text: str, chunk_chars: int = CHUNK_CHARS) -> list[str]:
    """Cut text into pieces of about ``chunk_chars`` at a newline followed by non-space.

    >>> chunk_text("aa\\nbb\\ncc", 3)
    ['aa\\n', 'bb\\n', 'cc']
    """
    if len(text) <= chunk_chars:
        return [text]
    chunks, pos = [], 0
    while len(text) - pos > chunk_chars:
        match = _CUT.search(text, pos + chunk_chars)
        if match is None:
            break
        chunks.append(text[pos : match.end()])
        pos = match.end()
    chunks.append(text[pos:])
    return chunks


def document_parts(doc: TextDocument, tok: LoadedTokenizer) -> list[int | str]:
    """The document as a sequence of special-token ids and text, before encoding: the
    tokenizer's BOS (if it adds one), the text (a repository: its name and each file under a
    header), the end-of-text token."""
    parts: list[int | str] = list(tok.bos_ids)
    if doc.kind == CODE:
        if tok.repo_name_id is not None:
            parts += [tok.repo_name_id, f"{doc.title}\n"]
        else:
            parts.append(f"Repository: {doc.title}\n")
        for path, text in zip(doc.files, doc.texts, strict=True):
            body = text if text.endswith("\n") else text + "\n"
            if tok.file_sep_id is not None:
                parts += [tok.file_sep_id, f"{path}\n{body}"]
            else:
                parts.append(f"\n### File: {path}\n{body}")
    else:
        parts.extend(doc.texts)
    parts.append(tok.end_of_text_id)
    return parts


@dataclass
class EncodedDocument:
    """Token ids plus where a window may start without cutting a chapter, paragraph or line.

    Each array holds sorted token offsets: ``chapters`` (detected chapter headings of a book,
    file headers of a repository), ``paragraphs`` (after a token that ends a blank line) and
    ``lines`` (after a token that ends a line). The last two come from a per-vocabulary lookup
    table, so they cost one vectorised pass over the ids.
    """

    tokens: np.ndarray
    chapters: np.ndarray
    paragraphs: np.ndarray
    lines: np.ndarray

    @property
    def tiers(self) -> list[np.ndarray]:
        return [self.chapters, self.paragraphs, self.lines]


def _pieces(text: str, forced: list[int]) -> list[tuple[str, bool]]:
    """Cut ``text`` into chunks of about CHUNK_CHARS, and always at the ``forced`` offsets.

    Returns ``(piece, starts_at_forced_cut)``. Forced cuts must be line starts followed by a
    non-space character (chapter headings are), so the ids equal those of one ``encode``.
    """
    out: list[tuple[str, bool]] = []
    start = 0
    for c in sorted(set(forced)):
        if 0 < c < len(text):
            out.extend(
                (chunk, k == 0 and start > 0) for k, chunk in enumerate(chunk_text(text[start:c]))
            )
            start = c
    out.extend((chunk, k == 0 and start > 0) for k, chunk in enumerate(chunk_text(text[start:])))
    if forced and 0 in forced and out:
        out[0] = (out[0][0], True)
    return out


def _layout(doc: TextDocument, tok: LoadedTokenizer):
    """A document as texts to encode and a layout: special ids, and ``(first, count)`` ranges
    into the texts; plus which text starts at a chapter cut."""
    parts = document_parts(doc, tok)
    texts: list[str] = []
    layout: list[int | tuple[int, int]] = []  # special id, or (first, count) into texts
    chapter_piece: list[bool] = []
    forced = doc.chapters if (doc.kind != CODE and doc.chapters) else []
    for part in parts:
        if isinstance(part, int):
            layout.append(part)
        else:
            pieces = _pieces(part, forced)
            layout.append((len(texts), len(pieces)))
            texts.extend(p for p, _ in pieces)
            chapter_piece.extend(f for _, f in pieces)
    return texts, layout, chapter_piece


def _assemble(
    tok: LoadedTokenizer, encoded: list[np.ndarray], layout, chapter_piece
) -> EncodedDocument:
    arrays, chapters = [], []
    pos = 0
    for item in layout:
        if isinstance(item, int):
            if item == tok.file_sep_id:
                chapters.append(pos)
            arrays.append(np.array([item], dtype=np.int32))
            pos += 1
            continue
        first, count = item
        for k in range(first, first + count):
            ids = encoded[k]
            if ids.size and chapter_piece[k]:
                chapters.append(pos)
            arrays.append(ids)
            pos += ids.size
    tokens = np.concatenate(arrays) if arrays else np.zeros(0, np.int32)
    line_end, para_end = tok.newline_tables()
    body = tokens[:-1]
    return EncodedDocument(
        tokens=tokens,
        chapters=np.unique(np.asarray(chapters, dtype=np.int64)),
        paragraphs=np.flatnonzero(para_end[body]).astype(np.int64) + 1,
        lines=np.flatnonzero(line_end[body]).astype(np.int64) + 1,
    )


def encode_documents_full(docs: list[TextDocument], tok: LoadedTokenizer) -> list[EncodedDocument]:
    """Token ids of whole documents (int32), separators and end-of-text included, with the
    token offsets where chapters (a book's ``doc.chapters`` headings, a repository's file
    headers), paragraphs and lines start. The documents' chunks go to ``encode_batch_fast``
    together, :data:`ENCODE_GROUP` a call (many short documents: one call each would leave the
    tokenizer's threads waiting on the call overhead; a long one: one call for all its chunks
    would hold every chunk's Encoding at once); each text is encoded on its own either way, so
    the ids are those of one document at a time."""
    plans = [_layout(doc, tok) for doc in docs]
    texts = [t for plan in plans for t in plan[0]]
    encoded: list[np.ndarray] = []
    for lo in range(0, len(texts), ENCODE_GROUP):
        group = tok.tokenizer.encode_batch_fast(
            texts[lo : lo + ENCODE_GROUP], add_special_tokens=False
        )
        encoded.extend(np.asarray(e.ids, dtype=np.int32) for e in group)
    out, start = [], 0
    for doc_texts, layout, chapter_piece in plans:
        out.append(_assemble(tok, encoded[start : start + len(doc_texts)], layout, chapter_piece))
        start += len(doc_texts)
    return out


def encode_document_full(doc: TextDocument, tok: LoadedTokenizer) -> EncodedDocument:
    """:func:`encode_documents_full` of one document."""
    return encode_documents_full([doc], tok)[0]


def encode_and_window_many(
    docs: list[TextDocument], tok: LoadedTokenizer, *, seq_len: int, overlap: int, slack: int
) -> list[tuple[EncodedDocument, np.ndarray, np.ndarray]]:
    """Encode documents (one batch) and cut each one's windows at chapter / paragraph / line
    starts: ``(encoded, starts, lengths)`` per document, as the pipeline and ``count_tokens``
    both do it."""
    out = []
    for enc in encode_documents_full(docs, tok):
        starts, lengths = window_document(
            int(enc.tokens.shape[0]), seq_len=seq_len, overlap=overlap, tiers=enc.tiers, slack=slack
        )
        out.append((enc, starts, lengths))
    return out


def encode_and_window(
    doc: TextDocument, tok: LoadedTokenizer, *, seq_len: int, overlap: int, slack: int
) -> tuple[EncodedDocument, np.ndarray, np.ndarray]:
    """:func:`encode_and_window_many` of one document."""
    return encode_and_window_many([doc], tok, seq_len=seq_len, overlap=overlap, slack=slack)[0]


def encode_document(doc: TextDocument, tok: LoadedTokenizer) -> np.ndarray:
    """Token ids of a whole document (int32), separators and end-of-text included."""
    return encode_document_full(doc, tok).tokens
