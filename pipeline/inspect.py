"""Show one sample of an output decoded, with what it is made of marked.

    python -m pipeline.inspect OUT --sample N [--split train|validation] [--max-chars N]
    longctx-inspect OUT --sample 0 --max-chars 0          # the same; 0: every character

The sample's tokens are decoded with the output's tokenizer: the manifest's ``tokenizer.name``
(``bundled:qwen3`` is the bundled Qwen3), or ``--tokenizer PATH`` for an output made on another
machine; either must have the sha256 the manifest records. Special tokens are shown as their
text (``<|file_sep|>``, ``<|endoftext|>``). Marked, on lines of their own:

- each segment (``seq_lengths``): its place in the sample (sample tokens ``a..b``), its document
  (doc_id, kind, origin relative to the input it came from) and its window of that document
  (document tokens ``doc_start..doc_start+len of n_tokens``: the whole document, its start, a
  middle or its end; into how many windows the document was cut);
- the first ``--overlap`` tokens of a continuation window (they repeat the previous window);
- code: the repository files the segment spans, from documents.arrow's ``files`` (in order) and
  the file-separator tokens; a file continued from the previous window is named too.

    ======== segment 1 of 2 | sample tokens 0..3326 | code/json
             document tokens 8111..11437 of 11437: the end (of 3 windows)
             code, origin json
             files: __init__.py, tool.py
    -------- file __init__.py, continued (it starts at document token 7105)
    ...text...
    -------- file tool.py (document token 10756)
    <|file_sep|>tool.py
    ...text...<|endoftext|>
    ======== end of segment 1 of 2 (code/json)

``--max-chars N`` prints at most N characters of each stretch of text between two marks (its
head and tail, with the count of characters left out); 0 prints all, and the text lines are
then the decoded tokens exactly (a mark that falls inside a line, as the end of the repeated
``--overlap`` tokens may, breaks that line). Exit 0, or 2 with a
message for an unusable argument (no finished output, no such sample or split, a tokenizer
that is not the output's).
"""

from __future__ import annotations

import argparse
import bisect
import sys
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import USAGE, UsageError
from pipeline.shown_paths import input_roots, shown_path, shown_tokenizer
from schemas.layout import DOCUMENTS, MANIFEST, SPLITS, TRAIN, VALIDATION
from schemas.manifest import Manifest, parse_manifest
from schemas.storage import exists, join, read_bytes, read_table
from transforms.documents import CODE
from transforms.samples.tokenize import LoadedTokenizer, TokenizerError, load_tokenizer

DEFAULT_MAX_CHARS = 2000
RULE, FILE_RULE = "========", "--------"


@dataclass
class Piece:
    """A stretch of a segment's text between two marks."""

    text: str
    file: str | None = None  # code: the file the text belongs to (None: a book, a header)
    file_start: int | None = None  # code: document token offset of that file's separator
    starts_file: bool = False  # the stretch begins with the file's separator token
    repeated: bool = False  # tokens that repeat the end of the previous window (--overlap)


@dataclass
class SegmentView:
    """One segment of a sample: ``length`` tokens of ``doc_id`` from ``doc_start``."""

    number: int
    doc_id: str
    kind: str
    origin: str  # relative to the input it came from (pipeline/shown_paths.py)
    sample_start: int
    doc_start: int
    length: int
    doc_tokens: int
    windows: int  # the document's n_segments
    context: int = 0  # leading tokens that repeat the previous window (--overlap)
    file_marks: bool = True  # code: files are told apart by a separator token
    pieces: list[Piece] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.pieces)

    @property
    def files(self) -> list[str]:
        """The repository files this segment spans, in document order."""
        return list(dict.fromkeys(p.file for p in self.pieces if p.file is not None))

    @property
    def place(self) -> str:
        end = self.doc_start + self.length == self.doc_tokens
        if self.doc_start == 0:
            return "the whole document" if end else "the start"
        return "the end" if end else "a middle part"


@dataclass
class SampleView:
    out: str
    split: str
    index: int
    count: int  # samples in the split
    shard: str  # the shard's path inside OUT
    row: int
    seq_len: int
    n_tokens: int
    dependency_score: float | None
    tokenizer: str
    segments: list[SegmentView]


@dataclass
class Output:
    """What inspecting needs of a finished output: its manifest, documents and tokenizer."""

    path: str
    manifest: Manifest
    documents: pa.Table
    tok: LoadedTokenizer
    roots: list[str]


def open_output(out: str, tokenizer: str | None = None) -> Output:
    """The output folder ``out``, with the tokenizer it was made with (``tokenizer``: another
    path to the same tokenizer.json); raises UsageError saying what to do."""
    if not exists(join(out, MANIFEST)):
        raise UsageError(f"{out}: no {MANIFEST}, so not a finished output of pipeline.run")
    manifest = parse_manifest(read_bytes(join(out, MANIFEST)))
    recorded = manifest.tokenizer
    spec = tokenizer or recorded["name"]
    hint = "" if tokenizer else "; pass --tokenizer PATH (its tokenizer.json or folder)"
    try:
        tok = load_tokenizer(spec)
    except TokenizerError as err:
        raise UsageError(f"{err} (the tokenizer {out} was made with){hint}") from err
    if recorded.get("sha256") and tok.sha256 != recorded["sha256"]:
        raise UsageError(
            f"--tokenizer {spec}: not the tokenizer {out} was made with (sha256 "
            f"{tok.sha256[:12]}..., the manifest says {recorded['sha256'][:12]}...){hint}"
        )
    documents = read_table(join(out, DOCUMENTS))
    return Output(out, manifest, documents, tok, input_roots(manifest.data.get("config") or {}))


def _locate(manifest: Manifest, split: str, index: int) -> tuple[dict, int, int]:
    """(shard entry, row in it, samples in the split) of sample ``index`` of ``split``."""
    shards = manifest.shards_of(split)
    count = sum(int(s["rows"]) for s in shards)
    if not shards:
        hint = " (run pipeline.run with --eval-fraction)" if split == VALIDATION else ""
        raise UsageError(f"--split {split}: the output has no {split} samples{hint}")
    if not 0 <= index < count:
        raise UsageError(f"--sample {index}: the {split} split has samples 0..{count - 1}")
    row = index
    for entry in shards:
        if row < int(entry["rows"]):
            return entry, row, count
        row -= int(entry["rows"])
    raise AssertionError("unreachable: the rows add up to count")


def _file_starts(doc: dict, tok: LoadedTokenizer) -> list[int] | None:
    """Document token offsets of each file's separator: documents.arrow's chapter_starts of a
    code document, one per file; None when they cannot be told apart (no separator token)."""
    starts = [int(s) for s in doc.get("chapter_starts") or []]
    if doc["kind"] != CODE or tok.file_sep_id is None or len(starts) != len(doc["files"]):
        return None
    return starts


def _cuts(tokens: np.ndarray, seg: SegmentView, tok: LoadedTokenizer) -> list[int]:
    """Where the segment's text is cut for a mark: at each file separator (code) and after the
    tokens repeated from the previous window."""
    cuts = {0, len(tokens)}
    if seg.kind == CODE and tok.file_sep_id is not None:
        cuts.update(np.flatnonzero(tokens == tok.file_sep_id).tolist())
    if seg.context:
        cuts.add(min(seg.context, len(tokens)))
    return sorted(cuts)


def _pieces(tokens: np.ndarray, seg: SegmentView, doc: dict, out: Output) -> list[Piece]:
    """The segment's text, cut at every mark, each stretch with its file (code)."""
    tok = out.tok
    starts = _file_starts(doc, tok)
    cuts = _cuts(tokens, seg, tok)
    if starts is not None and any(
        seg.doc_start + c not in starts for c in cuts[:-1] if tokens[c] == tok.file_sep_id
    ):
        starts = None  # a separator where documents.arrow has no file start: names from text
    pieces = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        ids = tokens[a:b]
        text = tok.tokenizer.decode(ids.tolist(), skip_special_tokens=False)
        piece = Piece(text, starts_file=bool(ids.size and ids[0] == tok.file_sep_id))
        piece.repeated = b <= seg.context
        if starts is not None:
            k = bisect.bisect_right(starts, seg.doc_start + a) - 1
            if k >= 0:
                piece.file, piece.file_start = doc["files"][k], starts[k]
        elif piece.starts_file:
            sep = tok.tokenizer.id_to_token(tok.file_sep_id)
            piece.file, piece.file_start = text[len(sep) :].split("\n", 1)[0], seg.doc_start + a
        pieces.append(piece)
    return pieces


def _documents(out: Output, doc_ids: list[str]) -> dict[str, dict]:
    """The documents.arrow rows of ``doc_ids``."""
    wanted = out.documents.filter(pc.is_in(out.documents["doc_id"], pa.array(doc_ids)))
    found = {d["doc_id"]: d for d in wanted.to_pylist()}
    missing = sorted(set(doc_ids) - set(found))
    if missing:
        raise UsageError(
            f"{out.path}: {DOCUMENTS} has no document {missing[0]!r}; "
            "python -m pipeline.validate lists what is wrong with the output"
        )
    return found


def _context_tokens(shard: pa.Table, doc_starts: list[int], overlap: int) -> list[int]:
    """Per segment, the leading tokens that repeat the previous window: the shard's
    ``context_tokens`` column, or (outputs written before it) ``--overlap`` for a window that
    does not start its document."""
    if "context_tokens" in shard.schema.names:
        return shard.column("context_tokens")[0].as_py()
    return [overlap if start > 0 else 0 for start in doc_starts]


def sample_view(out: Output, index: int, split: str = TRAIN) -> SampleView:
    """Sample ``index`` of ``split``, decoded and cut into segments and marked stretches."""
    entry, row, count = _locate(out.manifest, split, index)
    shard = read_table(join(out.path, entry["path"])).slice(row, 1)
    ids = shard.column("input_ids")[0].values.to_numpy(zero_copy_only=False)
    lengths = shard.column("seq_lengths")[0].as_py()
    doc_ids = shard.column("doc_ids")[0].as_py()
    doc_starts = shard.column("doc_starts")[0].as_py()
    contexts = _context_tokens(shard, doc_starts, out.manifest.overlap)
    docs = _documents(out, doc_ids)
    segments, at = [], 0
    for number, (doc_id, start, length, context) in enumerate(
        zip(doc_ids, doc_starts, lengths, contexts, strict=True), 1
    ):
        doc = docs[doc_id]
        seg = SegmentView(
            number=number,
            doc_id=doc_id,
            kind=doc["kind"],
            origin=shown_path(doc["origin"], out.roots),
            sample_start=at,
            doc_start=int(start),
            length=int(length),
            doc_tokens=int(doc["n_tokens"]),
            windows=int(doc["n_segments"]),
            context=min(int(context), int(length)),
            file_marks=out.tok.file_sep_id is not None,
        )
        seg.pieces = _pieces(ids[at : at + length], seg, doc, out)
        segments.append(seg)
        at += length
    score = shard.column("dependency_score")[0].as_py()
    return SampleView(
        out=out.path,
        split=split,
        index=index,
        count=count,
        shard=entry["path"],
        row=row,
        seq_len=out.manifest.seq_len,
        n_tokens=int(ids.size),
        dependency_score=score,
        tokenizer=shown_tokenizer(out.tok.name),
        segments=segments,
    )


def _clip(text: str, max_chars: int) -> str:
    """At most about ``max_chars`` characters of ``text``: its head and tail (cut at a line
    end when one is near), around a line that counts what is left out."""
    if not max_chars or len(text) <= max_chars:
        return text
    half = max(max_chars // 2, 1)
    head, tail = text[:half], text[len(text) - half :]
    if head.rfind("\n") >= half // 2:
        head = head[: head.rfind("\n") + 1]
    if 0 <= tail.find("\n") < half // 2:
        tail = tail[tail.find("\n") + 1 :]
    cut = len(text) - len(head) - len(tail)
    head = head if head.endswith("\n") else head + "\n"
    return f"{head}[... {cut:,} characters not shown; --max-chars 0 shows all ...]\n{tail}"


def _segment_header(seg: SegmentView, total: int) -> list[str]:
    pad = " " * (len(RULE) + 1)
    end = seg.doc_start + seg.length
    lines = [
        f"{RULE} segment {seg.number} of {total} | sample tokens {seg.sample_start}.."
        f"{seg.sample_start + seg.length} | {seg.doc_id}",
        f"{pad}document tokens {seg.doc_start}..{end} of {seg.doc_tokens}: {seg.place}"
        + (f" (of {seg.windows} windows)" if seg.windows > 1 else ""),
        f"{pad}{seg.kind}, origin {seg.origin}",
    ]
    if seg.kind == CODE and not seg.file_marks:
        lines.append(f"{pad}files: see the '### File:' headers (no <|file_sep|> token)")
    elif seg.kind == CODE:
        lines.append(f"{pad}files: " + (", ".join(seg.files) or "none (the repository header)"))
    return lines


def _file_mark(piece: Piece) -> str:
    if piece.starts_file:
        return f"{FILE_RULE} file {piece.file} (document token {piece.file_start})"
    return (
        f"{FILE_RULE} file {piece.file}, continued (it starts at document token {piece.file_start})"
    )


def _segment_lines(seg: SegmentView, total: int, max_chars: int) -> list[str]:
    """A segment's header, its text with a mark at each file and overlap boundary, its end."""
    lines = ["", *_segment_header(seg, total)]
    previous: Piece | None = None
    for piece in seg.pieces:
        if piece.file is not None and (
            previous is None or piece.file != previous.file or piece.starts_file
        ):
            lines.append(_file_mark(piece))
        if piece.repeated and (previous is None or not previous.repeated):
            lines.append(
                f"{FILE_RULE} {seg.context} tokens that repeat the end of the previous window "
                "(--overlap: context only)"
            )
        elif not piece.repeated and previous is not None and previous.repeated:
            lines.append(f"{FILE_RULE} new tokens from here")
        text = _clip(piece.text, max_chars)
        lines.append(text[:-1] if text.endswith("\n") else text)
        previous = piece
    lines.append(f"{RULE} end of segment {seg.number} of {total} ({seg.doc_id})")
    return lines


def render(view: SampleView, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """The sample as the command prints it."""
    score = "-" if view.dependency_score is None else f"{view.dependency_score:.4f}"
    lines = [
        f"{view.out}: {view.split} sample {view.index} of {view.count} "
        f"({view.shard}, row {view.row})",
        f"{view.n_tokens} of {view.seq_len} tokens (fill {view.n_tokens / view.seq_len:.3f}), "
        f"{len(view.segments)} segment(s), tokenizer {view.tokenizer}, dependency score {score}",
    ]
    for seg in view.segments:
        lines += _segment_lines(seg, len(view.segments), max_chars)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m pipeline.inspect",
        description="Show one sample of a pipeline output decoded, with document boundaries, "
        "file names and window provenance marked.",
    )
    parser.add_argument("output", metavar="OUT", help="output folder written by pipeline.run")
    parser.add_argument(
        "--sample", type=int, required=True, metavar="N", help="sample number, from 0"
    )
    parser.add_argument("--split", choices=SPLITS, default=TRAIN, help="default: train")
    parser.add_argument(
        "--max-chars",
        type=int,
        default=DEFAULT_MAX_CHARS,
        metavar="N",
        help=f"characters shown of each stretch of text between marks (head and tail); "
        f"0: all (default {DEFAULT_MAX_CHARS})",
    )
    parser.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="the output's tokenizer, when the manifest's name does not load here "
        "(checked against the manifest's sha256)",
    )
    args = parser.parse_args(argv)
    if args.max_chars < 0:
        parser.error("--max-chars must be >= 0")
    try:
        out = open_output(args.output, args.tokenizer)
        view = sample_view(out, args.sample, args.split)
    except UsageError as err:
        print(f"python -m pipeline.inspect: {err}", file=sys.stderr)
        return USAGE
    sys.stdout.write(render(view, args.max_chars))
    return 0


if __name__ == "__main__":
    sys.exit(main())
