#!/usr/bin/env python3
"""Check that a LoRA/DoRA adapter directory loads cleanly in PEFT and report its merged dW.

Loads the base with ``LlamaForCausalLM.from_pretrained(BASE_DIR)`` (a local
directory; nothing is fetched from the Hub), loads the adapter with
``PeftModel.from_pretrained`` and exits non-zero if

* PEFT warns about missing adapter keys,
* the adapter file holds keys PEFT does not use (PEFT ignores those silently),
* the model's adapter tensors differ from the file's after loading, or
* merging changes any parameter other than the adapted modules' weights.

It then merges with ``merge_and_unload()`` and, for every adapted module
(Hugging Face path such as ``model.layers.0.self_attn.q_proj``), writes
dW = merged weight - base weight:

* ``OUT.json``: per module ``shape``, ``fro`` (||dW||_F, float64) and
  ``max_abs`` (largest |dW_ij|), plus the adapter's r / alpha / scaling;
* ``OUT.safetensors`` (same stem as OUT.json): dW per module, float32,
  keyed by module path.

Usage::

    python scripts/peft_load_check.py ADAPTER_DIR BASE_DIR OUT.json
"""

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
import transformers
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def fail(msg: str) -> None:
    """Print an error and exit with status 1."""
    print(f"peft_load_check: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def adapter_file_tensors(adapter_dir: Path) -> dict:
    """The tensors of ``adapter_model.safetensors`` exactly as stored."""
    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        fail(f"{path} not found")
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def check_keys(model: PeftModel, stored: dict) -> None:
    """Fail unless the file's keys, shapes and values equal what PEFT holds after loading."""
    expected = get_peft_model_state_dict(model, save_embedding_layers=False)
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        fail(f"adapter keys do not match PEFT's: missing={missing} unexpected={unexpected}")
    for key, tensor in expected.items():
        if tuple(tensor.shape) != tuple(stored[key].shape):
            fail(f"{key}: shape {list(stored[key].shape)} in file, PEFT expects {list(tensor.shape)}")
        if not torch.equal(tensor.detach().cpu(), stored[key].to(tensor.dtype)):
            fail(f"{key}: tensor in the model differs from the file after loading")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("adapter_dir", type=Path, help="PEFT adapter directory")
    parser.add_argument("base_dir", type=Path, help="local base model directory")
    parser.add_argument("out_json", type=Path, help="report path; dW goes to the same stem + .safetensors")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="float32", help="dtype to load the base in (default float32)"
    )
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()

    stored = adapter_file_tensors(args.adapter_dir)
    base = LlamaForCausalLM.from_pretrained(args.base_dir, dtype=DTYPES[args.dtype]).eval()
    before = {n: p.detach().to(torch.float64).clone() for n, p in base.named_parameters()}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, args.adapter_dir).eval()
    for w in caught:
        text = str(w.message)
        if "missing adapter keys" in text or "unexpected" in text.lower():
            fail(f"PEFT warned while loading: {text}")
    check_keys(model, stored)

    layers = {
        n.removeprefix("base_model.model."): m for n, m in model.named_modules() if isinstance(m, LoraLayer)
    }
    if not layers:
        fail("the adapter adapts no module")
    info = {
        path: {
            "r": int(m.r["default"]),
            "alpha": m.lora_alpha["default"],
            "scaling": float(m.scaling["default"]),
            "dora": bool(m.use_dora.get("default", False)),
        }
        for path, m in sorted(layers.items())
    }

    merged = model.merge_and_unload()
    after = {n: p.detach().to(torch.float64) for n, p in merged.named_parameters()}
    if set(after) != set(before):
        fail("merge changed the set of parameters")
    adapted = {f"{path}.weight" for path in info}
    changed = sorted(n for n in before if n not in adapted and not torch.equal(before[n], after[n]))
    if changed:
        fail(f"merge changed non-adapted parameters: {changed}")

    modules, deltas = {}, {}
    for path, rec in info.items():
        dw = after[f"{path}.weight"] - before[f"{path}.weight"]
        deltas[path] = dw.to(torch.float32).contiguous()
        modules[path] = {
            "shape": list(dw.shape),
            **rec,
            "fro": float(torch.linalg.norm(dw)),
            "max_abs": float(dw.abs().max()),
        }

    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    delta_path = args.out_json.with_suffix(".safetensors")
    save_file(deltas, delta_path)
    report = {
        "adapter_dir": str(args.adapter_dir),
        "base_dir": str(args.base_dir),
        "base_dtype": args.dtype,
        "delta_safetensors": delta_path.name,
        "num_adapter_tensors": len(stored),
        "modules": modules,
    }
    args.out_json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"peft_load_check: OK: {len(modules)} modules, {len(stored)} tensors -> {args.out_json}")


if __name__ == "__main__":
    main()
