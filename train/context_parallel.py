"""Context parallelism: one packed row split over ``--context-parallel N`` processes (one per GPU).

DeepSpeed-Ulysses-style sequence parallelism, written with plain ``torch.distributed`` (no
DeepSpeed, no flash-attn). The N ranks of the group train on the same row (every rank's data
loader yields the same rows in the same order; each step checks it)::

    the row          [ a0 a1 a2 a3 | b0 b1 b2 b3 b4 | c0 c1 c2 ]  padded to a multiple of N
    rank 0 of 2      [ a0 a1 a2 a3 b0 b1 b2 ]                   position_ids 0 1 2 3 0 1 2
    rank 1 of 2                              [ b3 b4 c0 c1 c2 pad pad ]   3 4 0 1 2 0 1

Embeddings, norms, MLPs and the LM head work token by token, so each rank runs them on its
1/N slice, with the slice's *global* ``position_ids`` (RoPE, and the restart at every
document, stay as in one process). Attention is the one step that needs the whole row: the
registered attention function :func:`ulysses_attention` (``attn_implementation =
"longctx_ulysses"``) turns q, k, v from [all heads, seq/N] into [heads/N, whole seq] with an
all-to-all, attends over the whole row for its heads with per-document causal masking, and
turns the output back with the inverse all-to-all. Both all-to-alls are autograd functions
whose backward is the other one. The documents come from the row's position_ids (a document
starts wherever a position is not the previous one plus one, transformers' rule for packed
rows: the collator restarts positions at 0 at every document, or every row in ``stream``
mode), so ``--attention per-document`` and ``stream`` both hold under CP. Attention runs one
SDPA call per document (causal, nothing materialised) or, for short documents, per pack of
up to ``PACK_TOKENS`` tokens with a block-diagonal causal mask.

Loss: each rank sums the token losses of its slice (the labels are shifted over the whole row
first, so the last token of a slice predicts the first of the next one) in chunks of
``LOSS_CHUNK`` tokens whose logits are recomputed in the backward pass (never the whole
slice's logits at once); the loss is the all-reduced sum over the count of label tokens (the
Trainer's ``num_items_in_batch``: the whole accumulation window's), so it equals the
one-process loss. Its gradient on each rank is only the rank's own part, and each
parameter's gradient is a partial sum: the trainable gradients are all-reduced (SUM) over
the group after every backward pass, before clipping and the optimizer step.

The Trainer is transformers' own with each rank seeing itself as a single process (this
module initialises the process group, then hides torchrun's RANK / WORLD_SIZE / LOCAL_RANK
from transformers and accelerate): no DDP wrapper, no data sharding, rank 0 alone saves.
Heads and KV heads must divide by N (:func:`train.plan.check_context_parallel`).
``--gradient-checkpointing unsloth`` (the default) keeps each decoder layer's input in host
memory until the backward pass (:func:`offload_checkpoints`, this module's own version of
Unsloth's offloaded checkpointing); ``true`` keeps them on the GPU (transformers' own).
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property, partial

import torch
import torch.distributed as dist
import torch.nn.functional as F

from train.data import IGNORE_INDEX
from train.plan import CP_LOSS_CHUNK, CP_MLP_CHUNK

_LOG = logging.getLogger("longctx.train")

ATTENTION = "longctx_ulysses"
# Short documents share one SDPA call with a block-diagonal causal mask (PACK_TOKENS^2 booleans);
# a longer document gets a call of its own with is_causal (no mask at all).
PACK_TOKENS = 2048
# Tokens whose logits exist at once in the loss (recomputed per chunk in the backward pass).
LOSS_CHUNK = CP_LOSS_CHUNK
# Tokens of one tile of the tiled MLP (``--tiled-mlp true``).
MLP_CHUNK = CP_MLP_CHUNK
# What torchrun sets and transformers / accelerate read to decide on DDP and data sharding.
TORCHRUN_ENV = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
)


@dataclass
class _State:
    group: object = None  # the process group (None: one process, no all-to-all)
    size: int = 1
    rank: int = 0
    local_rank: int = 0
    segments: list[int] | None = None  # the current padded row's documents (lengths)


_STATE = _State()


def state() -> _State:
    return _STATE


# ---------------------------------------------------------------------------------------------
# The all-to-all pair (autograd-aware: the backward of one is the other)


def seq_to_heads(x: torch.Tensor, group, size: int) -> torch.Tensor:
    """[b, heads, seq/N, d] (all heads of this rank's tokens) -> [b, heads/N, seq, d] (this
    rank's heads, rank r's tokens at [r*seq/N, (r+1)*seq/N))."""
    b, h, s, d = x.shape
    send = x.reshape(b, size, h // size, s, d).transpose(0, 1).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # recv[r]: rank r's tokens, my heads
    return recv.permute(1, 2, 0, 3, 4).reshape(b, h // size, size * s, d)


def heads_to_seq(x: torch.Tensor, group, size: int) -> torch.Tensor:
    """The inverse of :func:`seq_to_heads`: [b, heads/N, seq, d] -> [b, heads, seq/N, d]."""
    b, hl, seq, d = x.shape
    s = seq // size
    send = x.reshape(b, hl, size, s, d).permute(2, 0, 1, 3, 4).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # recv[r]: my tokens, rank r's heads
    return recv.transpose(0, 1).reshape(b, size * hl, s, d)


class _SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, size):
        ctx.group, ctx.size = group, size
        return seq_to_heads(x, group, size)

    @staticmethod
    def backward(ctx, grad):
        return heads_to_seq(grad.contiguous(), ctx.group, ctx.size), None, None


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, size):
        ctx.group, ctx.size = group, size
        return heads_to_seq(x, group, size)

    @staticmethod
    def backward(ctx, grad):
        return seq_to_heads(grad.contiguous(), ctx.group, ctx.size), None, None


# ---------------------------------------------------------------------------------------------
# Per-document attention over a whole row


def segment_lengths(position_ids: torch.Tensor) -> list[int]:
    """Lengths of the documents of a row of position ids: a new one starts wherever a position
    is not the previous one plus one (transformers' rule for packed rows without a mask)."""
    pos = position_ids.reshape(-1)
    starts = (torch.nonzero(pos[1:] != pos[:-1] + 1).reshape(-1) + 1).tolist()
    edges = [0, *starts, pos.numel()]
    return [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _packs(segments: list[int], limit: int) -> list[list[int]]:
    """Consecutive documents grouped into packs of at most ``limit`` tokens; a longer document
    is a pack of its own."""
    packs: list[list[int]] = []
    current: list[int] = []
    for n in segments:
        if current and sum(current) + n > limit:
            packs.append(current)
            current = []
        current.append(n)
        if n > limit:
            packs.append(current)
            current = []
    if current:
        packs.append(current)
    return packs


def _block_causal_mask(lengths: list[int], device) -> torch.Tensor:
    doc = torch.repeat_interleave(
        torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device)
    )
    n = doc.numel()
    causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    return (doc[:, None] == doc[None, :]) & causal


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def document_attention(q, k, v, segments: list[int], *, scaling, dropout: float, n_rep: int):
    """Causal attention within each document of the row ``segments`` (their lengths, summing to
    the sequence length of q [b, heads, seq, d]; k, v [b, kv_heads, seq, d])."""
    outs, start = [], 0
    for pack in _packs(segments, PACK_TOKENS):
        n = sum(pack)
        qs, ks, vs = (t[:, :, start : start + n] for t in (q, k, v))
        if len(pack) == 1:
            o = F.scaled_dot_product_attention(
                qs, ks, vs, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=n_rep > 1
            )
        else:
            o = F.scaled_dot_product_attention(
                qs,
                _repeat_kv(ks, n_rep),
                _repeat_kv(vs, n_rep),
                attn_mask=_block_causal_mask(pack, q.device),
                dropout_p=dropout,
                scale=scaling,
            )
        outs.append(o)
        start += n
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def ulysses_attention(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
):
    """The ``"longctx_ulysses"`` attention implementation (transformers' AttentionInterface):
    query [b, heads, seq/N, d], key/value [b, kv_heads, seq/N, d] of this rank's tokens ->
    output [b, seq/N, heads, d]. Without a group (one process) it is plain per-document
    attention, the documents read from ``position_ids``."""
    if attention_mask is not None:
        raise ValueError(
            f"{ATTENTION}: got an attention mask; packed rows are masked per document from "
            "their position_ids, pass no attention_mask"
        )
    if query.shape[0] != 1:
        raise ValueError(f"{ATTENTION}: batch {query.shape[0]}; the collator flattens rows to one")
    st = _STATE
    n_rep = query.shape[1] // key.shape[1]
    if st.size > 1:
        if query.shape[1] % st.size or key.shape[1] % st.size:
            raise ValueError(
                f"{ATTENTION}: {query.shape[1]} heads / {key.shape[1]} KV heads do not divide "
                f"by --context-parallel {st.size}"
            )
        if st.segments is None or sum(st.segments) != query.shape[2] * st.size:
            raise RuntimeError(f"{ATTENTION}: no row set for this forward (use forward_loss)")
        query, key, value = (_SeqToHeads.apply(t, st.group, st.size) for t in (query, key, value))
        segments = st.segments
    else:
        position_ids = kwargs.get("position_ids")
        segments = [query.shape[2]] if position_ids is None else segment_lengths(position_ids)
    out = document_attention(
        query, key, value, segments, scaling=scaling, dropout=dropout, n_rep=n_rep
    )
    if st.size > 1:
        out = _HeadsToSeq.apply(out, st.group, st.size)
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> str:
    """Register :func:`ulysses_attention` with transformers; returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, ulysses_attention)
    return ATTENTION


# ---------------------------------------------------------------------------------------------
# Offloaded gradient checkpointing (``--gradient-checkpointing unsloth`` on this path)


def _amp_state(device_type: str) -> tuple[bool, torch.dtype]:
    """The autocast state of the forward pass, replayed around a rerun in the backward pass:
    the autograd engine runs backward functions on its own threads, where autocast (thread
    local) is off, so a rerun without it would compute other dtypes than the forward did."""
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


def _replay_amp(device_type: str, state: tuple[bool, torch.dtype]):
    return torch.autocast(device_type, enabled=state[0], dtype=state[1])


def _rng_state(device: torch.device) -> tuple:
    """The random state of the forward pass (the CPU's, and the GPU's on a GPU), replayed by
    :func:`_replay_rng` around a rerun so that it draws the forward's dropout masks."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


@contextmanager
def _replay_rng(device: torch.device, state: tuple):
    cpu, cuda = state
    with torch.random.fork_rng(devices=[device] if cuda is not None else []):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
        yield


class _OffloadedCheckpoint(torch.autograd.Function):
    """One decoder layer run without keeping its activations: its input waits in host memory
    (``on_host``; pageable copies here) or on the GPU, and the layer is run again, with
    gradients, in the backward pass (what Unsloth's offloaded checkpointing does). The RNG
    state is replayed for the rerun. ``anchor`` (an empty tensor that requires grad) makes
    the output require grad when the input does not: the first layer's input, the
    embeddings, needs no gradient (frozen) and, so, no graph node that would hold it on the
    GPU for the whole step. The rerun's output is freed before its backward pass when its
    last operation keeps no tensors (the residual add of the decoder layers)."""

    @staticmethod
    def forward(ctx, run, hidden, on_host, anchor):
        ctx.run, ctx.device = run, hidden.device
        ctx.amp = _amp_state(hidden.device.type)
        ctx.saved = hidden.detach().to("cpu") if on_host else hidden.detach()
        ctx.version = None if on_host else hidden._version
        ctx.rng = _rng_state(hidden.device)
        with torch.no_grad():
            out = run(hidden)
        return out

    @staticmethod
    def backward(ctx, grad):
        if ctx.version is not None and ctx.saved._version != ctx.version:
            raise RuntimeError(
                "a layer input kept on the GPU for its checkpoint was modified in place before "
                "the backward pass; the rerun would compute wrong gradients"
            )
        wants_input = ctx.needs_input_grad[1]
        hidden = ctx.saved.to(ctx.device).detach().requires_grad_(wants_input)
        ctx.saved = None
        with (
            _replay_rng(ctx.device, ctx.rng),
            torch.enable_grad(),
            _replay_amp(ctx.device.type, ctx.amp),
        ):
            out = ctx.run(hidden)
        if out.grad_fn is not None:
            _free_output(out)
            torch.autograd.backward(out, grad)
        return None, hidden.grad if wants_input else None, None, None


# The backward nodes of the ops that keep none of their inputs or outputs: a rerun output made
# by one of them can be freed before its backward pass (only its grad_fn is needed).
_KEEPS_NOTHING = {"AddBackward0", "SubBackward0"}


def _free_output(out: torch.Tensor) -> None:
    """Free the storage of ``out`` (its values are not needed, only its graph) when the op that
    made it keeps nothing for its backward pass and nothing else holds it: not a view, no other
    tensor on its storage, no other reference (a forward hook that kept the layer's output would
    be left with an empty tensor). Called as ``_free_output(out)`` on a local ``out``."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if (
        use_count is None
        or sys.version_info >= (3, 14)  # getrefcount may leave out borrowed references
        or out.grad_fn.name() not in _KEEPS_NOTHING
        or out._base is not None
    ):
        return
    storage = out.untyped_storage()
    if (
        storage.nbytes() == out.numel() * out.element_size()
        and use_count(storage._cdata) <= 2  # the tensor's and this storage object's
        and sys.getrefcount(out) <= 3  # the caller's name, this argument, getrefcount's own
    ):
        storage.resize_(0)


def _layer_checkpoint(run, hidden, more, on_host: bool):
    """Run ``_OffloadedCheckpoint`` over a layer that returns its hidden states, either as a
    tensor (transformers 5) or as a tuple of them and Nones (Unsloth's patched layers return
    ``(hidden_states,)``); the result has the layer's own form."""
    if more:
        raise TypeError("checkpointing a layer expects the hidden states as the only positional")
    form = {}

    def run_tensor(h):
        out = run(h)
        if isinstance(out, tuple):
            if (
                not out
                or not isinstance(out[0], torch.Tensor)
                or any(o is not None for o in out[1:])
            ):
                raise TypeError(
                    "checkpointing a layer expects it to return its hidden states (a tensor, or a "
                    f"tuple of them and Nones), got {tuple(type(o).__name__ for o in out)}"
                )
            form["tuple"] = len(out)
            return out[0]
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"checkpointing a layer expects it to return a tensor, got {type(out)}")
        return out

    anchor = torch.empty(0, device=hidden.device, requires_grad=torch.is_grad_enabled())
    out = _OffloadedCheckpoint.apply(run_tensor, hidden, on_host, anchor)
    return (out,) + (None,) * (form["tuple"] - 1) if "tuple" in form else out


def offloaded_checkpoint(run, hidden, *more):
    """A ``_gradient_checkpointing_func`` for transformers' GradientCheckpointingLayer: the
    layer's input waits in host memory."""
    return _layer_checkpoint(run, hidden, more, on_host=True)


RESIDENT_CALLS = [0]  # forward calls of resident_checkpoint in this process (the summary's)


def resident_checkpoint(run, hidden, *more):
    """The same, with the layer's input kept on its device (for layers whose checkpoints the
    host has no room for)."""
    RESIDENT_CALLS[0] += 1
    return _layer_checkpoint(run, hidden, more, on_host=False)


def _checkpointed_layers(model) -> list:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [
        m
        for m in model.modules()
        if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing
    ]


def offload_checkpoints(model, gpu_layers: int = 0) -> int:
    """Make every checkpointed decoder layer of ``model`` keep its input in host memory (after
    ``gradient_checkpointing_enable``), but the first ``gpu_layers``, which keep theirs on the
    GPU (:func:`keep_checkpoints_on_gpu`); returns how many layers offload."""
    layers = _checkpointed_layers(model)
    for layer in layers:
        layer._gradient_checkpointing_func = offloaded_checkpoint
    keep_checkpoints_on_gpu(model, gpu_layers)
    return len(layers) - gpu_layers


def keep_checkpoints_on_gpu(model, count: int) -> list[int]:
    """Make the first ``count`` checkpointed decoder layers of ``model`` keep their input on the
    GPU instead of offloading it (the plan's ``offload.gpu_layers``: the layers the host RAM has
    no room for). Works on Unsloth's model too, whose other layers keep Unsloth's own offloaded
    checkpointing. Returns the indices (among the checkpointed layers) it changed; raises
    ValueError when the model has fewer checkpointed layers than ``count``."""
    if count <= 0:
        return []
    layers = _checkpointed_layers(model)
    if count > len(layers):
        raise ValueError(
            f"the plan keeps {count} layers' checkpoints on the GPU, but the model has "
            f"{len(layers)} checkpointed layers (is gradient checkpointing on?)"
        )
    for layer in layers[:count]:
        layer._gradient_checkpointing_func = resident_checkpoint
    return list(range(count))


def make_checkpoint_keeper(count: int):
    """A Trainer callback that applies :func:`keep_checkpoints_on_gpu` when training begins.
    Setting it at load time is not enough: with ``gradient_checkpointing=True`` (TRL's
    SFTConfig default) the Trainer calls ``gradient_checkpointing_enable`` at the start of
    ``train()``, which gives every layer the default checkpoint function again (on the GPU,
    Unsloth's offloaded one: the kept layers went to host RAM as well). ``on_train_begin``
    comes after that."""
    from transformers import TrainerCallback

    class KeepCheckpointsOnGPU(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            keep_checkpoints_on_gpu(model, count)

    return KeepCheckpointsOnGPU()


# ---------------------------------------------------------------------------------------------
# Tiled MLP (``--tiled-mlp true`` on this path)


class _TiledMLP(torch.autograd.Function):
    """The MLP over the sequence in tiles of ``chunk`` tokens: only its input is kept, and the
    backward pass runs each tile again, with gradients, one at a time (Arctic long-sequence
    training's TiledMLP, what Unsloth's tiled MLP does): the MLP's intermediate activations
    (three tensors of intermediate_size a token) exist for one tile, not the whole slice. The
    trainable parameters are inputs of the function and get their gradient, summed over the
    tiles, from its backward pass, as from any other op (DDP sees each once; they get one also
    when ``x`` needs none). The random state is replayed, so the reruns draw the forward's
    dropout masks."""

    @staticmethod
    def forward(ctx, run, chunk, x, *params):
        ctx.run, ctx.chunk, ctx.params = run, chunk, params
        ctx.amp = _amp_state(x.device.type)
        ctx.rng = _rng_state(x.device)
        ctx.save_for_backward(x)
        with torch.no_grad():
            return _tiles(run, x, chunk)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        wants_x = ctx.needs_input_grad[2]
        params = [p for p, wants in zip(ctx.params, ctx.needs_input_grad[3:], strict=True) if wants]
        x_grad = torch.empty_like(x) if wants_x else None
        sums: list = [None] * len(params)
        with _replay_rng(x.device, ctx.rng):
            for i, (part, part_grad) in enumerate(
                zip(x.split(ctx.chunk, dim=-2), grad.split(ctx.chunk, dim=-2), strict=True)
            ):
                part = part.detach().requires_grad_(wants_x)
                with torch.enable_grad(), _replay_amp(x.device.type, ctx.amp):
                    out = ctx.run(part)
                inputs = ([part] if wants_x else []) + params
                grads = torch.autograd.grad(out, inputs, part_grad, allow_unused=True)
                if wants_x:
                    x_grad[..., i * ctx.chunk : i * ctx.chunk + part.shape[-2], :].copy_(grads[0])
                    grads = grads[1:]
                for j, g in enumerate(grads):
                    if g is not None:
                        sums[j] = g if sums[j] is None else sums[j] + g
        it = iter(sums)
        param_grads = [next(it) if wants else None for wants in ctx.needs_input_grad[3:]]
        return None, None, x_grad, *param_grads


def _tiles(run, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``run`` over ``x`` in tiles of ``chunk`` tokens, the outputs joined."""
    return torch.cat([run(part) for part in x.split(chunk, dim=-2)], dim=-2)


def _tiled_forward(mlp, run, chunk: int, x: torch.Tensor) -> torch.Tensor:
    if x.shape[-2] <= chunk:
        return run(x)
    if not torch.is_grad_enabled():
        return _tiles(run, x, chunk)
    params = [p for p in mlp.parameters() if p.requires_grad]  # LoRA's, once PEFT added them
    return _TiledMLP.apply(run, chunk, x, *params)


def tile_mlps(model, chunk: int = MLP_CHUNK) -> int:
    """Run every decoder layer's MLP of ``model`` in tiles of ``chunk`` tokens (before or after
    ``get_peft_model``: the tiled forward calls whatever the MLP holds and finds its trainable
    parameters at each call); returns how many MLPs. Mixture-of-experts blocks (an ``experts``
    attribute; in transformers 4.x they return router logits beside the output) stay whole."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    mlps = [
        m.mlp
        for m in model.modules()
        if isinstance(m, GradientCheckpointingLayer)
        and isinstance(getattr(m, "mlp", None), torch.nn.Module)
        and not hasattr(m.mlp, "experts")
    ]
    for mlp in mlps:
        mlp.forward = partial(_tiled_forward, mlp, mlp.forward, chunk)
    return len(mlps)


# ---------------------------------------------------------------------------------------------
# Leaner activations of the recomputed layer (what Unsloth's kernels save, in plain torch)


# Elements of the lean RMSNorm's float32 working set at a time (8,192 tokens of a 2,048-wide
# hidden state): its forward and backward passes run over the rows in chunks of this many
# elements, so that their float32 temporaries (four of the input's size in the backward pass: 16
# bytes a hidden unit a token, more than all a layer keeps) exist for one chunk, not the whole
# slice; per-head q/k norms (rows of head_dim) take correspondingly more rows a chunk. Row-wise
# arithmetic: the same result.
NORM_CHUNK_ELEMENTS = 8192 * 2048


def _norm_chunk_rows(d: int) -> int:
    return max(1, NORM_CHUNK_ELEMENTS // d)


class _RMSNorm(torch.autograd.Function):
    """RMSNorm (Llama's: float32 inside, ``weight * normed.to(input dtype)``) that keeps only
    its input and the float32 reciprocal RMS for the backward pass; transformers' keeps the
    float32 copy of the input and its normalised float32 product (12 bytes an element for a
    bf16 input instead of 2). Both passes run ``NORM_CHUNK_ELEMENTS`` at a time. The weight is
    frozen (LoRA): no gradient for it."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        out, rstd = _norm_rows(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        d = x.shape[-1]
        xs, gs, rs = x.reshape(-1, d), grad.reshape(-1, d), rstd.reshape(-1, 1)
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        flat, w, step = dx.view(-1, d), weight.float(), _norm_chunk_rows(d)
        for i in range(0, xs.shape[0], step):
            part = slice(i, i + step)
            xhat = xs[part].float() * rs[part]
            g = gs[part].float() * w
            flat[part] = rs[part] * (g - xhat * (g * xhat).mean(-1, keepdim=True))
        return dx, None, None


def _norm_rows(x: torch.Tensor, weight: torch.Tensor, eps: float):
    """Llama's RMSNorm of ``x`` over its last dimension, ``NORM_CHUNK_ELEMENTS`` at a time:
    (output, float32 reciprocal RMS of each row); the output is a tensor of its own (not a
    view), of ``x``'s shape."""
    d = x.shape[-1]
    xs = x.reshape(-1, d)
    dtype = torch.promote_types(weight.dtype, x.dtype)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    rstd = torch.empty(*x.shape[:-1], 1, dtype=torch.float32, device=x.device)
    flat_out, flat_rstd, step = out.view(-1, d), rstd.view(-1, 1), _norm_chunk_rows(d)
    for i in range(0, xs.shape[0], step):
        part = slice(i, i + step)
        x32 = xs[part].float()
        flat_rstd[part] = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        flat_out[part] = weight * (x32 * flat_rstd[part]).to(x.dtype)
    return out, rstd


def _lean_norm_forward(norm, x):
    if norm.weight.requires_grad:
        return type(norm).forward(norm, x)
    if not torch.is_grad_enabled():  # the checkpointed layers' first pass
        return _norm_rows(x, norm.weight, norm.variance_epsilon)[0]
    return _RMSNorm.apply(x, norm.weight, norm.variance_epsilon)


def lean_activations(model, *, autocast: bool) -> dict:
    """Make the layers that the backward pass reruns keep less: every ``*RMSNorm`` with a
    frozen weight and a ``variance_epsilon`` (Llama, Mistral, Qwen2/3, their q/k norms) keeps
    its input and a float32 scalar a token (:class:`_RMSNorm`); with ``autocast`` (bf16 mixed
    precision on a GPU) PEFT's LoRA layers stop casting their input to the adapter's float32
    (one float32 copy of the hidden states per adapted projection, kept for the backward
    pass): the adapter's matmuls run in bf16 under autocast, as the base layer's do, and the
    float32 adapter weights stay the optimizer's; :func:`forward_loss` then runs the decoder
    under bf16 autocast (the Trainer's own autocast does not reach it: it calls the decoder,
    not the model's forward). Returns how many modules of each kind."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base._longctx_autocast = autocast  # read by forward_loss
    norms = lora = 0
    for m in model.modules():
        if (
            type(m).__name__.endswith("RMSNorm")
            and isinstance(getattr(m, "weight", None), torch.nn.Parameter)
            and hasattr(m, "variance_epsilon")
        ):
            m.forward = partial(_lean_norm_forward, m)
            norms += 1
        if autocast and hasattr(m, "cast_input_dtype_enabled"):
            m.cast_input_dtype_enabled = False
            lora += 1
    return {"norms": norms, "lora_layers": lora}


# ---------------------------------------------------------------------------------------------
# The process group


def init_group(cp: int) -> _State:
    """Under torchrun: join the process group (nccl on a GPU, gloo on a CPU), pick this rank's
    GPU, then hide torchrun's variables so that transformers and accelerate see one process
    each (no DDP, no data sharding). The world must be exactly the CP group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != cp:
        raise ValueError(
            f"--context-parallel {cp} needs exactly {cp} processes, got WORLD_SIZE {world}; "
            "data parallel beside context parallel is not supported"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if on_gpu else "gloo",
            **({"device_id": torch.device("cuda", local_rank)} if on_gpu else {}),
        )
    for name in TORCHRUN_ENV:
        os.environ.pop(name, None)
    _STATE.group, _STATE.size, _STATE.rank, _STATE.local_rank = (
        dist.group.WORLD,
        cp,
        rank,
        local_rank,
    )
    _LOG.info("context parallel: rank %d of %d (%s)", rank, cp, dist.get_backend())
    return _STATE


def close_group() -> None:
    """Leave the process group (every rank, after the last collective: training and the final
    evaluation)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _STATE.group, _STATE.size, _STATE.segments = None, 1, None


def set_group(group, size: int, rank: int) -> None:
    """Use an existing process group (tests); size 1 = no context parallelism."""
    _STATE.group, _STATE.size, _STATE.rank, _STATE.segments = group, size, rank, None


# ---------------------------------------------------------------------------------------------
# The loss over a split row


def _check_same_row(ids: torch.Tensor, st: _State) -> None:
    """Every rank of the group must hold the same row: compare a fingerprint."""
    weights = torch.arange(ids.numel(), device=ids.device) % 1009 + 1
    f = int((ids * weights).sum()) * 8 + ids.numel() % 8
    t = torch.tensor([f, -f], dtype=torch.int64, device=ids.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=st.group)
    if int(t[0]) != -int(t[1]):
        raise RuntimeError(
            "context parallel: the ranks got different rows (their data loaders diverged)"
        )


def _chunk_loss_sum(lm_head, hidden, target):
    logits = lm_head(hidden).float()
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_loss_sum(hidden: torch.Tensor, lm_head, target: torch.Tensor, chunk: int = LOSS_CHUNK):
    """Summed cross-entropy of ``hidden`` [tokens, hidden] through ``lm_head`` against
    ``target`` [tokens], ``chunk`` tokens at a time; with gradients on, each chunk's logits are
    recomputed in the backward pass instead of kept."""
    from torch.utils.checkpoint import checkpoint

    total = None
    for i in range(0, hidden.shape[0], chunk):
        h, y = hidden[i : i + chunk], target[i : i + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            part = checkpoint(partial(_chunk_loss_sum, lm_head), h, y, use_reentrant=False)
        else:
            part = _chunk_loss_sum(lm_head, h, y)
        total = part if total is None else total + part
    return total


def split_row(inputs: dict, size: int, rank: int) -> dict:
    """The full row (``input_ids``, ``labels``, ``position_ids`` [1, n]) -> this rank's slice:
    ``input_ids``/``position_ids`` [1, n'/size] and ``target`` [n'/size] (the label each token
    predicts: labels shifted over the whole row), n' = n padded to a multiple of ``size`` with
    ignored targets; also ``segments`` (the padded row's documents) and ``count`` (its label
    tokens)."""
    ids, labels, pos = inputs["input_ids"], inputs["labels"], inputs["position_ids"]
    if ids.shape[0] != 1:
        raise ValueError(f"context parallel: batch {ids.shape[0]}; the collator flattens rows")
    ids, labels, pos = ids[0], labels[0], pos[0]
    target = torch.cat([labels[1:], labels.new_full((1,), IGNORE_INDEX)])
    pad = (-ids.numel()) % size
    if pad:  # a document of its own at the end, never a target
        ids = torch.cat([ids, ids.new_zeros(pad)])
        pos = torch.cat([pos, torch.arange(pad, device=pos.device, dtype=pos.dtype)])
        target = torch.cat([target, target.new_full((pad,), IGNORE_INDEX)])
    s = ids.numel() // size
    part = slice(rank * s, (rank + 1) * s)
    return {
        "input_ids": ids[part][None],
        "position_ids": pos[part][None],
        "target": target[part],
        "segments": segment_lengths(pos),
        "count": target.ne(IGNORE_INDEX).sum(),
        "full_ids": ids,
    }


def forward_loss(model, inputs: dict, num_items_in_batch=None, *, return_hidden: bool = False):
    """The loss of the full row in ``inputs`` over the group: this rank runs its slice; the
    returned loss's value is the whole row's summed token loss / label tokens
    (``num_items_in_batch`` when the Trainer gives it: the accumulation window's count), its
    gradient only this rank's part (see the module docstring)."""
    st = _STATE
    part = split_row(inputs, st.size, st.rank)
    if st.size > 1:
        _check_same_row(part["full_ids"], st)
    st.segments = part["segments"]  # read by ulysses_attention, also when recomputing
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    ids = part["input_ids"]
    amp = getattr(lm, "_longctx_autocast", False)  # set by lean_activations
    decoder = lm.get_decoder()
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=amp):
        # the embeddings are frozen: detached, no graph node holds them on the GPU for the step
        # (``enable_input_require_grads`` makes them a leaf that needs grad, which its
        # AccumulateGrad node would keep; the checkpoints do not need it, see
        # _OffloadedCheckpoint's anchor)
        embeds = decoder.get_input_embeddings()(ids)
        if not embeds.requires_grad or embeds.grad_fn is None:
            embeds = embeds.detach()
        hidden = decoder(
            inputs_embeds=embeds, position_ids=part["position_ids"], use_cache=False
        ).last_hidden_state[0]
        del embeds
    local = chunked_loss_sum(hidden, lm.get_output_embeddings(), part["target"])
    count = part["count"] if num_items_in_batch is None else num_items_in_batch
    total = local.detach().clone()
    if st.size > 1:
        dist.all_reduce(total, group=st.group)
    loss = (local + (total - local.detach())) / count
    return (loss, hidden) if return_hidden else loss


# ---------------------------------------------------------------------------------------------
# Gradients and parameters across the group


def sum_gradients(params: list, group) -> None:
    """All-reduce (SUM) the gradients of ``params`` over the group, one flat buffer per dtype;
    a parameter with no gradient contributes zeros."""
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat, group=group)
        for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
            g.copy_(synced)


def broadcast_parameters(params: list, group) -> None:
    """Rank 0's values of ``params`` on every rank (the LoRA initialisation)."""
    for p in params:
        dist.broadcast(p.data, src=dist.get_global_rank(group, 0), group=group)


def make_trainer(args: dict, *, model, tokenizer, collator, train_dataset, eval_dataset=None):
    """transformers' Trainer whose loss is :func:`forward_loss` and whose trainable gradients
    are summed over the group after each backward pass; only rank 0 saves checkpoints."""
    from transformers import PrinterCallback, ProgressCallback, Trainer, TrainingArguments

    st = _STATE
    # memory: what the recomputed layers keep (measured on 2 x H200, docs/benchmarks.md)
    lean_activations(model, autocast=bool(args.get("bf16")))

    class _Arguments(TrainingArguments):
        @cached_property
        def _setup_devices(self):
            device = TrainingArguments._setup_devices.func(self)
            if torch.cuda.is_available():  # one GPU per process: this rank's
                device = torch.device("cuda", st.local_rank)
                torch.cuda.set_device(device)
                self._n_gpu = 1
            return device

    class ContextParallelTrainer(Trainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            # the loss is over num_items_in_batch (the window's label tokens), as the model's own
            self.model_accepts_loss_kwargs = True
            self._cp_params = [p for p in self.model.parameters() if p.requires_grad]
            broadcast_parameters(self._cp_params, st.group)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = forward_loss(model, inputs, num_items_in_batch)
            return (loss, {"loss": loss}) if return_outputs else loss

        def training_step(self, model, inputs, num_items_in_batch=None):
            earlier = [p.grad for p in self._cp_params]
            for p in self._cp_params:
                p.grad = None
            loss = super().training_step(model, inputs, num_items_in_batch)
            sum_gradients(self._cp_params, st.group)  # this micro-step's part only
            for p, g in zip(self._cp_params, earlier, strict=True):
                if g is not None:
                    p.grad.add_(g)
            return loss

    if st.rank != 0:  # rank 0 writes checkpoints; every rank reads them when resuming
        args = dict(args, save_strategy="no")
    trainer = ContextParallelTrainer(
        model=model,
        args=_Arguments(**args),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
    )
    if st.rank != 0:
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
    return trainer
