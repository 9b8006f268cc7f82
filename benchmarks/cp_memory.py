"""Where the context-parallel path's memory goes: the live tensors at the peak of one training
step (forward + backward) of ``--context-parallel 2``, per local token, grouped by the operation
that made them (issue 21: what sets the per-GPU slope that bounds the longest context).

    python benchmarks/cp_memory.py --tokens 4096,8192 [--layers 2] [--shape 1b]   # CPU, gloo
    python benchmarks/cp_memory.py --tokens 262144,524288 --device cuda               # 2 GPUs

Two processes (one per rank; gloo on a CPU, nccl on GPUs) run the path ``train.launch
--context-parallel 2 --tiled-mlp true`` builds (``train.model.load_transformers`` +
``train.context_parallel.make_trainer``'s lean activations): a random model of the shape with
``--layers`` decoder layers, bf16 weights, LoRA r16 on all seven projections, offloaded
checkpoints, the tiled MLP, bf16 autocast, on one packed row of ``--doc-tokens`` documents. On a
CPU a dispatch-mode ledger counts every tensor storage made during the step and when it dies
(the parameters, made before, are not counted): the peak of live bytes and, at that peak, the
bytes by the operation that made each storage. On GPUs ``torch.cuda.max_memory_allocated``
gives the peak (the ledger runs too, unless ``--no-ledger``). The slope between two lengths is
the per-token cost the planner's ``estimate_cp_peak_bytes`` models; the table at the peak says
which tensors it is made of.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import weakref
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from train.random_model import SHAPES as RANDOM_SHAPES  # noqa: E402

# the width of train/random_model.py's shapes (the layers and vocabulary are flags here);
# "1b/4": the 1B shape at a quarter of its width, head_dim kept (the same ratios: per-token
# bytes are 1/4 of the 1B's)
WIDTH = (
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
)
SHAPES = {
    short: {k: RANDOM_SHAPES[name][k] for k in WIDTH}
    for short, name in (("1b", "llama-3.2-1b"), ("8b", "llama-3.1-8b"))
}
SHAPES["1b/4"] = {k: v if k == "head_dim" else v // 4 for k, v in SHAPES["1b"].items()}
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Ledger:
    """A TorchDispatchMode that counts the bytes of every storage an op makes, until the
    storage dies; ``peak`` and, at the peak, the live bytes by op (``at_peak``)."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        ledger = self
        self.live: dict = {}  # id(storage) -> (weakref to it, label)
        self.peak = 0
        self.at_peak: Counter = Counter()
        self.phase = "forward"

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                import torch
                from torch.utils._pytree import tree_leaves

                out = func(*args, **(kwargs or {}))
                inputs = {
                    id(t.untyped_storage())
                    for t in tree_leaves((args, kwargs))
                    if isinstance(t, torch.Tensor)
                }
                ledger.saw(out, f"{ledger.phase}:{func.overloadpacket.__name__}", inputs)
                return out

        self.mode = Mode()

    def saw(self, out, name: str, inputs: set) -> None:
        """Count the storages of ``out`` that are new (not an input's: views and in-place
        results are not new memory). Live bytes are summed from the storages themselves, so a
        storage freed by ``resize_(0)`` counts 0."""
        import torch

        grew = False
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            key = id(st)
            if key in self.live or key in inputs or st.nbytes() == 0:
                continue
            label = f"{name} {list(t.shape)} {str(t.dtype)[6:]} @{_where()}"
            self.live[key] = (weakref.ref(st), label)
            weakref.finalize(st, self.live.pop, key, None)
            grew = True
        if not grew:
            return
        now = Counter()
        for ref, label in list(self.live.values()):
            st = ref()
            if st is not None:
                now[label] += st.nbytes()
        total = sum(now.values())
        if total > self.peak:
            self.peak, self.at_peak = total, now

    def hosted(self, t) -> None:
        """``t`` is an offloaded checkpoint: in host memory on a GPU machine (on a CPU the copy
        to the host is the tensor itself), so not counted."""
        self.live.pop(id(t.untyped_storage()), None)


def _where() -> str:
    """The innermost frame of this project's, transformers' or PEFT's code (file:line)."""
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename
        if "/train/" in name or "transformers/models" in name or "/peft/" in name:
            return f"{Path(name).name}:{f.f_lineno}"
        f = f.f_back
    return "?"


LEDGER: list = [None]


def _host_marked(run, hidden, *more):
    from train import context_parallel as cp

    out = cp.offloaded_checkpoint(run, hidden, *more)
    if LEDGER[0] is not None:
        LEDGER[0].hosted(hidden)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_model(dims: dict, layers: int, vocab: int, tiled: bool, device, mlp_chunk: int,
                lora_r: int = 16):  # fmt: skip
    """A random Llama of width ``dims`` set up as ``train.launch --context-parallel N
    --tiled-mlp true`` sets up its model (bf16 weights, offloaded checkpoints, the tiled MLP,
    LoRA on all seven projections, lean activations under bf16 autocast); on a CPU each layer's
    input counts as the host copy it is on a GPU (:func:`_host_marked`)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from train import context_parallel as cp

    cfg = LlamaConfig(
        vocab_size=vocab,
        num_hidden_layers=layers,
        use_cache=False,
        max_position_embeddings=1 << 22,
        **dims,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.set_attn_implementation(cp.register_attention())
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    cp.offload_checkpoints(model)
    if device.type == "cpu":
        for layer in cp._checkpointed_layers(model):
            layer._gradient_checkpointing_func = _host_marked
    if tiled:
        cp.tile_mlps(model, chunk=mlp_chunk)
    model = get_peft_model(
        model,
        LoraConfig(r=lora_r, lora_alpha=lora_r, target_modules=MODULES, task_type="CAUSAL_LM"),
    )
    cp.lean_activations(model, autocast=True)
    model.train()
    return model


def measure_step(model, tokens: int, doc_tokens: int, vocab: int, device, ledger: bool = True):
    """One forward + backward of ``forward_loss`` on a row of ``tokens`` random ids packed from
    ``doc_tokens``-token documents: its loss and, with ``ledger``, the live bytes at the peak
    (``ledger_peak_bytes``) and by op there (``at_peak_bytes``); on a GPU its CUDA peaks."""
    import torch

    from train import context_parallel as cp
    from train.data import collate_packed

    gpu = device.type == "cuda"
    docs = [doc_tokens] * (tokens // doc_tokens)
    if tokens % doc_tokens:
        docs.append(tokens % doc_tokens)
    g = torch.Generator().manual_seed(tokens)
    row = {
        "input_ids": torch.randint(0, vocab, (tokens,), generator=g).tolist(),
        "seq_lengths": docs,
    }
    batch = collate_packed(
        [row], max_seq_length=tokens, with_packed_lengths=False, attention="per-document"
    )
    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
    model.zero_grad(set_to_none=True)
    counted = LEDGER[0] = Ledger() if ledger else None
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    try:
        if counted:
            with counted.mode:
                loss = cp.forward_loss(model, batch)
                counted.phase = "backward"
                loss.backward()
        else:
            loss = cp.forward_loss(model, batch)
            loss.backward()
    finally:
        LEDGER[0] = None
    result = {"tokens": tokens, "loss": float(loss.detach())}
    if gpu:
        torch.cuda.synchronize()
        result["cuda_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["cuda_step_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30
    if counted:
        result["ledger_peak_bytes"] = counted.peak
        result["at_peak_bytes"] = dict(counted.at_peak.most_common())
    return result


def _worker(rank: int, port: int, args: dict, out: str) -> None:
    import torch
    import torch.distributed as dist

    from train import context_parallel as cp

    gpu = args["device"] == "cuda"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if gpu:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    dist.init_process_group("nccl" if gpu else "gloo", rank=rank, world_size=2)
    cp.set_group(dist.group.WORLD, 2, rank)
    device = torch.device("cuda", rank) if gpu else torch.device("cpu")
    # documents longer than PACK_TOKENS each get an SDPA call of their own (is_causal), as the
    # 32K-token documents of the GPU runs do; a short row keeps the tile small against the row
    cp.PACK_TOKENS = min(cp.PACK_TOKENS, args["doc_tokens"] // 2)
    width = SHAPES[args["shape"]]["hidden_size"]
    cp.NORM_CHUNK_ELEMENTS = min(cp.NORM_CHUNK_ELEMENTS, args["mlp_chunk"] * width)
    model = build_model(
        SHAPES[args["shape"]], args["layers"], args["vocab"], args["tiled"], device,
        args["mlp_chunk"],
    )  # fmt: skip
    results = []
    for tokens in args["tokens"]:
        r = measure_step(model, tokens, args["doc_tokens"], args["vocab"], device, args["ledger"])
        r["local"] = tokens // 2
        if "ledger_peak_bytes" in r:
            r["ledger_peak_gib"] = r.pop("ledger_peak_bytes") / 2**30
        results.append(r)
    if rank == 0:
        Path(out).write_text(json.dumps(results, indent=1))
    dist.barrier()
    dist.destroy_process_group()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--tokens", default="4096,8192", help="row lengths, comma-separated")
    p.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--doc-tokens", type=int, default=2048)
    p.add_argument(
        "--mlp-chunk",
        type=int,
        default=8192,
        help="tokens of a tile of the tiled MLP (small on a CPU: a short row)",
    )
    p.add_argument("--untiled", action="store_true", help="without the tiled MLP")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--no-ledger", action="store_true")
    p.add_argument("--out", default="/tmp/cp_memory.json")
    a = p.parse_args(argv)
    import torch.multiprocessing as mp

    args = dict(
        tokens=[int(t) for t in a.tokens.split(",")],
        shape=a.shape,
        layers=a.layers,
        vocab=a.vocab,
        doc_tokens=a.doc_tokens,
        mlp_chunk=a.mlp_chunk,
        tiled=not a.untiled,
        device=a.device,
        ledger=not a.no_ledger,
    )
    mp.spawn(_worker, args=(_free_port(), args, a.out), nprocs=2, join=True)
    rows = json.loads(Path(a.out).read_text())
    for r in rows:
        peak = r.get("ledger_peak_gib")
        line = f"tokens {r['tokens']:>9,}  loss {r['loss']:.4f}"
        if "cuda_peak_gib" in r:
            line += f"  cuda peak {r['cuda_peak_gib']:.2f} GiB (step {r['cuda_step_gib']:.2f})"
        if peak is not None:
            line += f"  ledger peak {peak:.3f} GiB = {peak * 2**30 / r['local']:,.0f} B/local token"
        print(line)
        for op, n in list(r.get("at_peak_bytes", {}).items())[:24]:
            print(f"    {op:<80} {n / r['local']:>8,.0f} B/local token")
    if len(rows) >= 2:
        a0, a1 = rows[-2], rows[-1]
        for key in ("ledger_peak_gib", "cuda_peak_gib"):
            if key in a1:
                slope = (a1[key] - a0[key]) * 2**30 / (a1["local"] - a0["local"])
                print(
                    f"slope ({key}): {slope:,.0f} B per local token "
                    f"= {slope * 1000 / 2 / 2**30:.4f} GiB per 1K tokens of the row per GPU"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
