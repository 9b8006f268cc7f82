"""What ``train.evaluate`` measures: validation segments, per-token losses, the metrics.

Every *segment* of a packed sample is scored as its own sequence (positions from 0, no
attention to the documents packed beside it), so a document's tokens are scored with that
document's own preceding context only, as ``train.data.PackedCollator`` trains them. A window cut
from inside a long document (``doc_start`` > 0) starts at position 0 too, as it trained. Position
= index of the predicted token inside its segment; position 0 is never predicted::

    segment  a0 a1 a2 ... a(n-1)       loss[j] = -log p(a(j+1) | a0..aj),  position j+1

- ``per_position_loss``: mean loss in buckets [0,128), [128,256), [256,512) ... doubling up to
  ``seq_len`` (the last bucket ends at ``seq_len``); ``tokens`` sum to ``tokens_scored``.
- ``context_gain``: for each segment of at least seq_len/2 tokens, its last K tokens scored with
  the whole segment before them (``loss_full``) and again with only the C tokens before the
  first of them (``loss_truncated``: the input is the segment's last C+K tokens, so the K
  tokens see C to C+K-1 tokens). At 16K: K = 2048, C = 256/1024/4096 against at least 6144.
- ``key_token_loss`` (LongPPL-style, Fang et al. 2024): of the tokens in ``context_gain`` at the
  smallest C, those whose loss falls by more than ``margin`` nats with the full context; their
  ``share`` and mean losses both ways. LongPPL picks them with a separate evaluator model and
  also bounds their long-context loss; here the evaluated model picks them, no bound.
- ``passkey``: a random 5-digit key in filler sentences at depth 0/0.25/0.5/0.75/1 of a prompt
  of exactly ``length`` tokens, asked for at the end. ``accuracy`` = share of trials in which
  every answer token (`` 71432`` as the tokenizer splits it) is the argmax under teacher
  forcing: the same event as greedy decoding reproducing those tokens, in one forward pass.
- far-position loss (``order_signal``): mean loss at positions >= ``far_from`` (seq_len/2).

Scoring cost: segments are sorted by length and batched up to ``batch_tokens`` padded tokens,
padded on the right (causal attention never sees the padding, so SDPA keeps its ``is_causal``
flash path); the LM head runs in chunks of positions so that a 16K row's logits (16K x 151K
fp32 = 9.9 GB with Qwen3's vocabulary) never exist at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

FIRST_BUCKET = 128
DEFAULT_CONTEXTS = (256, 1024, 4096)
PASSKEY_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.")
FILLER += ("There and back again.",)
COLUMNS = ["input_ids", "seq_lengths", "doc_ids", "doc_starts"]
HOW_TO_SPLIT = "re-run the pipeline with --eval-fraction 0.05"


class EvalError(ValueError):
    """Input that cannot be evaluated; the message names the flag and says what to change."""


@dataclass(frozen=True)
class Segment:
    doc_id: str
    doc_start: int
    ids: np.ndarray  # int32, a view into the (memory-mapped) shard


# ---------------------------------------------------------------- validation data


def validation_shards(data_dir: str, manifest: dict, flag: str = "--data") -> list[Path]:
    """The validation shard files: manifest entries of split "validation" (``"split"``, or for
    an output from before ``--eval-fraction`` the ``validation-`` file name: train.data)."""
    from train.data import split_shards

    paths = [Path(data_dir) / s["path"] for s in split_shards(manifest, "validation")]
    if not paths:
        raise EvalError(
            f"{flag} {data_dir}: no validation split (shards/validation-*); {HOW_TO_SPLIT}"
        )
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise EvalError(f"{flag} {data_dir}: validation shard missing: {missing[0]}")
    return paths


def read_table(path: Path):
    """A shard's columns; Arrow IPC streams are memory-mapped (ids are read when scored)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        return pq.read_table(path, columns=COLUMNS)
    return pa.ipc.open_stream(pa.memory_map(str(path))).read_all().select(COLUMNS)


def segments_from_table(table) -> list[Segment]:
    """The segments of every row, in order, as numpy views (no copy for Arrow shards)."""
    out: list[Segment] = []
    for batch in table.to_batches():
        ids = batch.column("input_ids").flatten().to_numpy(zero_copy_only=False)
        lens = batch.column("seq_lengths").flatten().to_numpy(zero_copy_only=False)
        docs = batch.column("doc_ids").flatten().to_pylist()
        starts = batch.column("doc_starts").flatten().to_numpy(zero_copy_only=False)
        if int(lens.sum()) != len(ids) or not (len(lens) == len(docs) == len(starts)):
            raise EvalError("a shard's seq_lengths / doc_ids do not match its input_ids")
        ends = np.cumsum(lens)
        for doc, start, end, n in zip(docs, starts, ends, lens, strict=True):
            out.append(Segment(doc, int(start), ids[end - n : end]))
    return out


def read_segments(paths: list[Path]) -> list[Segment]:
    return [s for p in paths for s in segments_from_table(read_table(p))]


def select_documents(segments: list[Segment], max_tokens: int | None) -> list[Segment]:
    """Whole documents in order of first appearance until ``max_tokens`` are reached."""
    if not max_tokens:
        return segments
    by_doc: dict[str, list[Segment]] = {}
    for s in segments:
        by_doc.setdefault(s.doc_id, []).append(s)
    chosen, total = [], 0
    for segs in by_doc.values():
        if total >= max_tokens:
            break
        chosen += segs
        total += sum(len(s.ids) for s in segs)
    return chosen


# ---------------------------------------------------------------- scoring


class TokenScorer:
    """Per-token loss and argmax of a causal LM, one sequence per row.

    ``score(seqs)`` -> per sequence ``loss`` of length ``len(seq) - 1``, ``loss[j]`` =
    -log p(seq[j+1] | seq[:j+1]); ``score_with_argmax`` adds ``argmax[j]``, the most likely id
    there (on a CPU the argmax over a 151K vocabulary costs a third of the loss)."""

    def __init__(self, model, device, *, batch_tokens: int, logit_elements: int):
        self.model, self.device = model, device
        self.decoder = model.get_decoder()
        self.head = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.batch_tokens = batch_tokens
        self.chunk = max(64, logit_elements // self.head.out_features)

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        batches: list[list[int]] = []
        for i in order:  # longest first, so a batch's first row is its width
            if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= self.batch_tokens:
                batches[-1].append(i)
            else:
                batches.append([i])
        return batches

    def score(self, seqs: list[np.ndarray]) -> list[np.ndarray]:
        return [loss for loss, _ in self._run(seqs, with_argmax=False)]

    def score_with_argmax(self, seqs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        return self._run(seqs, with_argmax=True)

    def _run(self, seqs: list[np.ndarray], *, with_argmax: bool) -> list[tuple]:
        import torch

        out: list = [None] * len(seqs)
        for rows in self._batches([len(s) for s in seqs]):
            lengths = [len(seqs[i]) for i in rows]
            ids = np.zeros((len(rows), lengths[0]), dtype=np.int64)  # right padding: never seen
            for r, i in enumerate(rows):
                ids[r, : lengths[r]] = seqs[i]
            x = torch.from_numpy(ids).to(self.device)
            valid = torch.arange(lengths[0] - 1)[None, :] < torch.tensor(lengths)[:, None] - 1
            valid = valid.to(self.device)
            autocast = torch.autocast("cuda", torch.bfloat16, enabled=self.device.type == "cuda")
            with torch.inference_mode(), autocast:
                hidden = self.decoder(input_ids=x, use_cache=False).last_hidden_state
                hidden, target = hidden[:, :-1][valid], x[:, 1:][valid]
                losses, argmax = [], []
                for a in range(0, len(target), self.chunk):
                    logits = self.head(hidden[a : a + self.chunk]).float()
                    if self.softcap:
                        logits = torch.tanh(logits / self.softcap) * self.softcap
                    t = target[a : a + self.chunk]
                    losses.append(torch.nn.functional.cross_entropy(logits, t, reduction="none"))
                    if with_argmax:
                        argmax.append(logits.argmax(-1))
            loss = torch.cat(losses).cpu().numpy() if losses else np.zeros(0, np.float32)
            pred = torch.cat(argmax).cpu().numpy() if argmax else np.zeros(0, np.int64)
            bounds = np.cumsum([0] + [n - 1 for n in lengths])
            for r, i in enumerate(rows):
                out[i] = (loss[bounds[r] : bounds[r + 1]], pred[bounds[r] : bounds[r + 1]])
        return out


# ---------------------------------------------------------------- metrics


def position_buckets(seq_len: int, first: int = FIRST_BUCKET) -> list[tuple[int, int]]:
    """[0, first), then doubling, the last ending at ``seq_len``.

    >>> position_buckets(1024)
    [(0, 128), (128, 256), (256, 512), (512, 1024)]
    >>> position_buckets(600)
    [(0, 128), (128, 256), (256, 512), (512, 600)]
    """
    bounds = [0]
    edge = first
    while edge < seq_len:
        bounds.append(edge)
        edge *= 2
    bounds.append(seq_len)
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def mean_or_none(x: np.ndarray) -> float | None:
    return float(np.mean(x, dtype=np.float64)) if len(x) else None


def per_position_loss(losses: list[np.ndarray], seq_len: int) -> list[dict]:
    """``losses[i][j]`` is the loss at position j+1 of segment i (see the module docstring)."""
    flat = np.concatenate([np.asarray(x, np.float64) for x in losses]) if losses else np.zeros(0)
    pos = np.concatenate([np.arange(1, len(x) + 1) for x in losses]) if losses else np.zeros(0)
    rows = []
    for start, end in position_buckets(seq_len):
        sel = flat[(pos >= start) & (pos < end)]
        rows.append(
            {"start": start, "end": end, "tokens": int(len(sel)), "loss": mean_or_none(sel)}
        )
    return rows


def far_loss(losses: list[np.ndarray], far_from: int) -> tuple[float | None, int]:
    """Mean loss at positions >= ``far_from`` and the number of such tokens."""
    parts = [x[far_from - 1 :] for x in losses if len(x) >= far_from]
    flat = np.concatenate(parts) if parts else np.zeros(0)
    return mean_or_none(flat), int(len(flat))


def key_token_loss(full: np.ndarray, truncated: np.ndarray, margin: float) -> dict:
    """Tokens whose loss drops by more than ``margin`` with the full context (LongPPL)."""
    key = (truncated - full) > margin
    return {
        "margin": margin,
        "share": float(key.mean()) if len(key) else None,
        "loss_full": mean_or_none(full[key]),
        "loss_truncated": mean_or_none(truncated[key]),
        "key_tokens": int(key.sum()),
        "tokens": int(len(key)),
    }


def context_gain(
    scorer: TokenScorer,
    segments: list[Segment],
    full: list[np.ndarray],
    *,
    seq_len: int,
    k: int,
    contexts: list[int],
    margin: float,
) -> tuple[list[dict], dict]:
    """``context_gain`` rows (one per C) and ``key_token_loss`` at the smallest C."""
    longest = k + max(contexts, default=0)  # C + K < segment length: C really cuts
    chosen = [
        i for i, s in enumerate(segments) if len(s.ids) >= seq_len // 2 and len(s.ids) > longest
    ]
    tail_full = np.concatenate([full[i][-k:] for i in chosen]) if chosen else np.zeros(0)
    rows = []
    key = {
        "context": min(contexts, default=None),
        **key_token_loss(np.zeros(0), np.zeros(0), margin),
    }
    for c in sorted(contexts):
        seqs = [segments[i].ids[len(segments[i].ids) - k - c :] for i in chosen]
        tail = np.concatenate([x[-k:] for x in scorer.score(seqs)]) if chosen else np.zeros(0)
        rows.append(
            {
                "context": c,
                "loss_full": mean_or_none(tail_full),
                "loss_truncated": mean_or_none(tail),
                "tokens": int(len(tail)),
                "gain": None if not chosen else mean_or_none(tail) - mean_or_none(tail_full),
            }
        )
        if c == min(contexts):
            key = {"context": c, **key_token_loss(tail_full, tail, margin)}
    return rows, key


def passkey_prompt(encode, length: int, depth: float, key: int) -> tuple[np.ndarray, int]:
    """Exactly ``length`` ids: filler, the needle at ``depth`` of the filler (at a sentence
    start), more filler, the question and the answer; returns ``(ids, answer_tokens)``."""
    needle = encode(f" The pass key is {key}. Remember it. {key} is the pass key.")
    question = encode(" What is the pass key? The pass key is")
    answer = encode(f" {key}")
    room = length - len(needle) - len(question) - len(answer)
    if room < 0:
        raise EvalError(
            f"--passkey-lengths {length}: the prompt alone takes {length - room} tokens"
        )
    sentences = [encode(" " + s) for s in FILLER]
    filler, bounds, i = [], [0], 0
    while len(filler) < room:
        filler += sentences[i % len(sentences)]
        bounds.append(len(filler))
        i += 1
    filler = filler[:room]
    cut = min([b for b in bounds if b <= room] + [room], key=lambda b: (abs(b - depth * room), b))
    ids = filler[:cut] + needle + filler[cut:] + question + answer
    return np.asarray(ids, dtype=np.int64), len(answer)


def passkey(
    scorer: TokenScorer, encode, lengths: list[int], *, trials: int, seed: int
) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for length in lengths:
        cases = [
            (depth, *passkey_prompt(encode, length, depth, int(rng.integers(10000, 100000))))
            for depth in PASSKEY_DEPTHS
            for _ in range(trials)
        ]
        scored = scorer.score_with_argmax([ids for _, ids, _ in cases])
        for depth in PASSKEY_DEPTHS:
            hits = [
                bool((pred[-a:] == ids[-a:]).all())
                for (d, ids, a), (_, pred) in zip(cases, scored, strict=True)
                if d == depth
            ]
            rows.append(
                {
                    "length": length,
                    "depth": depth,
                    "accuracy": float(np.mean(hits)),
                    "trials": trials,
                }
            )
    return rows
