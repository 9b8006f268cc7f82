"""Merge a trained LoRA adapter into its base model: one folder transformers and vLLM load.

    python -m train.export --adapter runs/qwen3-8b-64k/adapter --out models/qwen3-8b-64k
    python -m train.export --adapter runs/qwen3-8b-64k/checkpoint-200 --out models/q-200 --merged-16bit

The base model is the one the run trained (``longctx_training.json``, written by
``train.launch`` into the adapter folder and the run's ``--output-dir``), else the adapter's
``base_model_name_or_path``; ``--base`` overrides both. Two ways to merge (``--backend``):

- ``unsloth`` (``auto`` picks it on a GPU with Unsloth installed): Unsloth loads the adapter over
  its base in 16 bits (a 4-bit QLoRA base too) and writes it with
  ``save_pretrained_merged(save_method="merged_16bit")``; ``unsloth`` is imported there only;
- ``peft`` (anywhere else): transformers loads the base in its stored dtype (``--merged-16bit``:
  bfloat16), PEFT's ``merge_and_unload`` folds the adapter in, ``save_pretrained`` writes it.

Either way the folder gets the tokenizer, and ``config.json`` / ``generation_config.json`` get
what the run trained with: the RoPE settings of its plan (``RopePlan.config``: YaRN for Qwen
past its window, llama3 kept for Llama 3, linear otherwise, or none) and the data's document end
as eos/pad (the token every document ended with). Exit status: 0 written, 2 bad arguments (the
message says what to change), 1 any other failure.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from train.model import apply_rope, use_document_end
from train.trainer import RUN_SETTINGS


class ExportError(ValueError):
    """Arguments that cannot work; the message says what to change."""


def read_settings(adapter: Path) -> dict | None:
    """The run's ``longctx_training.json``: in the adapter folder, or one level up (a
    ``checkpoint-N`` folder inside the run's ``--output-dir``); None if neither has it."""
    for folder in (adapter, adapter.parent):
        path = folder / RUN_SETTINGS
        if path.is_file():
            return json.loads(path.read_text())
    return None


def base_model(adapter: Path, settings: dict | None, flag: str | None) -> str:
    """``--base``, else the run's base model, else the adapter's ``base_model_name_or_path``."""
    if flag:
        return flag
    if settings and settings.get("base_model"):
        return settings["base_model"]
    named = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not named:
        raise ExportError(f"--adapter {adapter}: it names no base model; pass --base MODEL")
    return named


def choose_backend(flag: str) -> str:
    """``unsloth`` or ``peft``; ``auto`` is unsloth on a GPU where it is installed."""
    if flag != "auto":
        return flag
    if importlib.util.find_spec("unsloth") is None:
        return "peft"
    import torch

    return "unsloth" if torch.cuda.is_available() else "peft"


def _tokenizer_source(adapter: Path, base: str) -> str:
    """The adapter folder's tokenizer (train.launch saves it there, eos = the document end),
    else the base model's."""
    return str(adapter) if (adapter / "tokenizer_config.json").is_file() else base


def merge_peft(adapter: Path, base: str, out: Path, settings: dict | None, bf16: bool) -> str:
    """transformers + PEFT ``merge_and_unload``; returns the dtype written."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if bf16 else "auto"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_source(adapter, base))
    use_document_end(model, tokenizer, (settings or {}).get("document_end"))
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def merge_unsloth(adapter: Path, out: Path, settings: dict | None) -> str:
    """Unsloth's ``save_pretrained_merged`` (16-bit) over the base the adapter names; imported
    here only (GPU path)."""
    import unsloth  # noqa: F401  (must come before transformers)
    from unsloth import FastLanguageModel

    rope = ((settings or {}).get("rope") or {}).get("unsloth_rope_scaling")
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(adapter),
        max_seq_length=(settings or {}).get("max_seq_length") or 4096,
        load_in_4bit=False,
        dtype=None,
        **({"rope_scaling": rope} if rope else {}),
    )
    use_document_end(model, tokenizer, (settings or {}).get("document_end"))
    model.save_pretrained_merged(str(out), tokenizer, save_method="merged_16bit")
    return "16-bit"


def write_trained_config(out: Path, settings: dict | None) -> dict:
    """The run's RoPE settings and document end in ``OUT/config.json``; returns the RoPE keys
    written (empty when the run scaled nothing or recorded no settings)."""
    if not settings:
        return {}
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(out))
    rope = (settings.get("rope") or {}).get("config")
    apply_rope(config, rope)
    end = settings.get("document_end")
    if end:
        config.eos_token_id = config.pad_token_id = end["id"]
    config.save_pretrained(str(out))
    return rope or {}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog="python -m train.export", description=__doc__.split("\n")[0]
    )
    p.add_argument("--adapter", required=True, help="a run's adapter/ or checkpoint-N folder")
    p.add_argument("--out", required=True, help="folder for the merged model (new or empty)")
    p.add_argument(
        "--merged-16bit",
        action="store_true",
        help="write bfloat16 weights (the PEFT path otherwise keeps the base's stored dtype; "
        "Unsloth always writes 16 bits)",
    )
    p.add_argument("--base", help="base model folder or Hub id (default: the one the run trained)")
    p.add_argument(
        "--backend",
        choices=("auto", "unsloth", "peft"),
        default="auto",
        help="auto: Unsloth on a GPU where it is installed, else PEFT (default auto)",
    )
    return p


def export(args: argparse.Namespace) -> dict:
    """Check the arguments, merge, write the config; returns what was written."""
    adapter, out = Path(args.adapter), Path(args.out)
    if not (adapter / "adapter_config.json").is_file():
        raise ExportError(f"--adapter {adapter}: no adapter_config.json there")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out}: exists and is not an empty folder; choose a new one")
    settings = read_settings(adapter)
    base = base_model(adapter, settings, args.base)
    backend = choose_backend(args.backend)
    if backend == "unsloth" and args.base:
        raise ExportError("--base: Unsloth merges over the adapter's own base; use --backend peft")
    out.mkdir(parents=True, exist_ok=True)
    if backend == "unsloth":
        dtype = merge_unsloth(adapter, out, settings)
    else:
        dtype = merge_peft(adapter, base, out, settings, args.merged_16bit)
    rope = write_trained_config(out, settings)
    return {
        "out": str(out),
        "base": base,
        "adapter": str(adapter),
        "backend": backend,
        "dtype": dtype,
        "rope": rope,
        "document_end": (settings or {}).get("document_end"),
        "settings_found": settings is not None,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        written = export(args)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not written["settings_found"]:
        print(
            f"warning: no {RUN_SETTINGS} beside the adapter: config.json keeps the base's RoPE "
            "and eos (export an adapter written by train.launch to carry them)",
            file=sys.stderr,
        )
    print("exported", json.dumps(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
