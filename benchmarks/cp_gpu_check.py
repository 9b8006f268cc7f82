"""Context parallelism on real GPUs: does ``--context-parallel 2`` (train/context_parallel.py) give
the one-GPU loss and LoRA gradients over NCCL? (issue 21; the CPU tests check the same over gloo)

    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 \\
        python benchmarks/cp_gpu_check.py [--tokens 32768] [--out results.json]

Two processes, one GPU each, split one packed row of ``--tokens`` tokens (documents of mixed
lengths, positions restarting at each) through a small random Llama (float32, 8 heads, 4 KV
heads) with LoRA; the reference is the same model on one GPU with transformers' SDPA path. It
prints and writes: both losses, the largest relative gradient difference, whether document
isolation holds (changing the first document leaves the later documents' logits as they
were), and the time of one forward+backward each way. Runs on CPU/gloo too (slowly), with
``--tokens 512``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

VOCAB = 4096


def _docs(tokens: int) -> list[int]:
    """Mixed document lengths summing to ``tokens``: long and short ones, as packed rows hold."""
    pattern = [0.31, 0.02, 0.005, 0.22, 0.011, 0.09, 0.3]
    docs = [max(1, int(tokens * f)) for f in pattern]
    docs[-1] += tokens - sum(docs)
    return docs


def _row(tokens: int, changed_first_doc: bool = False) -> dict:
    g = torch.Generator().manual_seed(1)
    docs = _docs(tokens)
    ids = torch.randint(0, VOCAB, (tokens,), generator=g)
    if changed_first_doc:
        ids[: docs[0]] = (ids[: docs[0]] + 7) % VOCAB
    return {"input_ids": ids.tolist(), "seq_lengths": docs}


def _batch(row: dict, device) -> dict:
    from train.data import collate_packed

    b = collate_packed([row], max_seq_length=len(row["input_ids"]), with_packed_lengths=False)
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in b.items()}


def _model(attention: str, device):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1 << 20,
        use_cache=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.set_attn_implementation(attention)
    model = get_peft_model(
        model,
        LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]
        ),
    )
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model.to(device)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _worker(rank: int, port: int, tokens: int, out_dir: str) -> None:
    import torch.distributed as dist

    from train import context_parallel as cp

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    gpu = torch.cuda.is_available()
    device = torch.device("cuda", rank) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if gpu else "gloo", rank=rank, world_size=2, **({"device_id": device} if gpu else {})
    )
    cp.set_group(dist.group.WORLD, 2, rank)
    model = _model(cp.register_attention(), device)
    params = [p for p in model.parameters() if p.requires_grad]
    out = {}
    for name, changed, grads in (("row", False, True), ("changed", True, False)):
        model.zero_grad(set_to_none=True)
        batch = _batch(_row(tokens, changed), device)
        _sync(device)
        t = time.perf_counter()
        with torch.set_grad_enabled(grads):
            loss, hidden = cp.forward_loss(model, batch, return_hidden=True)
            logits = model.get_base_model().lm_head(hidden)
            if grads:
                loss.backward()
                cp.sum_gradients(params, dist.group.WORLD)
        _sync(device)
        out[name] = {
            "loss": loss.item(),
            "logits": logits.detach().float().cpu(),
            "seconds": time.perf_counter() - t,
            "grads": {
                n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.requires_grad
            }
            if grads
            else None,
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if gpu else None,
        }
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch.multiprocessing as mp

    tmp = tempfile.mkdtemp()
    t0 = time.perf_counter()
    mp.spawn(_worker, args=(_free_port(), args.tokens, tmp), nprocs=2, join=True)
    cp_wall = time.perf_counter() - t0
    ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in (0, 1)]
    gpu = torch.cuda.is_available()
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    ref = _model("sdpa", device)
    batch = _batch(_row(args.tokens), device)
    _sync(device)
    t = time.perf_counter()
    out = ref(**batch)
    out.loss.backward()
    _sync(device)
    ref_seconds = time.perf_counter() - t
    ref_logits = out.logits.detach().float().cpu()[0]
    worst = 0.0
    for name, p in ref.named_parameters():
        if p.requires_grad:
            a, b = ranks[0]["row"]["grads"][name], p.grad.detach().cpu()
            worst = max(worst, float((a - b).norm() / (b.norm() + 1e-12)))
    cp_logits = torch.cat([ranks[0]["row"]["logits"], ranks[1]["row"]["logits"]])[: args.tokens]
    changed = torch.cat([ranks[0]["changed"]["logits"], ranks[1]["changed"]["logits"]])
    first = _docs(args.tokens)[0]
    isolation = float((changed[first : args.tokens] - cp_logits[first:]).abs().max())
    result = {
        "device": torch.cuda.get_device_name(0) if gpu else "cpu",
        "backend": "nccl" if gpu else "gloo",
        "tokens": args.tokens,
        "documents": _docs(args.tokens),
        "loss_cp": ranks[0]["row"]["loss"],
        "loss_cp_rank1": ranks[1]["row"]["loss"],
        "loss_one_gpu": out.loss.item(),
        "loss_rel_diff": abs(ranks[0]["row"]["loss"] - out.loss.item()) / abs(out.loss.item()),
        "grad_max_rel_diff": worst,
        "logits_max_abs_diff": float((cp_logits - ref_logits).abs().max()),
        "later_documents_logits_change_when_first_changes": isolation,
        "seconds_fwd_bwd_cp_rank0": ranks[0]["row"]["seconds"],
        "seconds_fwd_bwd_one_gpu": ref_seconds,
        "peak_gib_cp_rank0": ranks[0]["row"]["peak_gib"],
        "peak_gib_one_gpu": torch.cuda.max_memory_allocated(device) / 2**30 if gpu else None,
        "cp_wall_s_incl_start": cp_wall,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    ok = result["loss_rel_diff"] < 1e-4 and worst < 1e-3 and isolation < 1e-4
    result["verdict"] = "equal" if ok else "DIFFERENT"
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
