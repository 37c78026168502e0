#!/usr/bin/env python3
"""Load a raw ``tsd train --method lora-dash`` checkpoint in real PEFT and check it is the Dash model.

CKPT is a checkpoint directory of a tsd run past its Dash switch (``RUN/checkpoints/step-N``):
``adapter_model.safetensors`` + ``adapter_config.json`` (what PEFT sees) and
``tsd_dash.safetensors`` beside them (the Dash parametrisation; README, Adapter formats).

The script

* computes the Dash model itself from ``tsd_dash.safetensors`` alone, in float64:
  ``W' = W + scaling*B@A + U@diag(delta_sigma)@Vt`` for every module (README, Definitions:
  LoRA-Dash), with r and alpha from the unfolded config in that file's metadata;
* loads CKPT with ``PeftModel.from_pretrained`` and fails on missing or unexpected adapter keys,
  on a file whose tensors differ from what PEFT holds, or on a ``tsd_dash.safetensors`` whose
  recorded sha256 is not the PEFT file's;
* compares PEFT's logits, unmerged and after ``merge_and_unload()``, with the Dash model's (fails
  at max |diff| >= 1e-4);
* for the record, also loads the same parametrisation the way tsd wrote checkpoints before (Dash
  tensors under tsd's names inside ``adapter_model.safetensors``, rank-r config) and reports how
  far PEFT's logits then are from the Dash model (PEFT drops the Dash term).

It writes OUT.json: versions, input ids, PEFT's merged logits and the differences above.
``tests/dash_checkpoint.rs`` compares tsd's logits for the committed checkpoint with them.

Usage (from the repository root, with the fixtures virtualenv)::

    python scripts/peft_dash_checkpoint_check.py CKPT BASE_DIR OUT.json
"""

import argparse
import hashlib
import json
import sys
import tempfile
import warnings
from pathlib import Path

import peft
import torch
import transformers
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

INPUT_IDS = [[1, 5, 60, 3, 33, 42, 17, 99], [1, 70, 71, 72, 10, 11, 12, 2]]
PREFIX = "base_model.model."


def fail(msg: str) -> None:
    print(f"peft_dash_checkpoint_check: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def read(path: Path):
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(INPUT_IDS)).logits.double()


def dash_model(base_dir: Path, tensors: dict, cfg: dict) -> torch.Tensor:
    """Logits of W + scaling*B@A + U diag(ds) Vt, merged in float64 from tsd_dash.safetensors."""
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        fail("rank_pattern / alpha_pattern in the unfolded config: not handled by this check")
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scaling = alpha / (r ** 0.5 if cfg.get("use_rslora") else r)
    model = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    params = dict(model.named_parameters())
    modules = sorted({k[len(PREFIX):].rsplit(".lora_", 1)[0] for k in tensors})
    n_dash = 0
    for m in modules:
        g = lambda suffix: tensors[f"{PREFIX}{m}.{suffix}"].double()
        w = params[f"{m}.weight"]
        delta = scaling * g("lora_B.weight") @ g("lora_A.weight")
        if f"{PREFIX}{m}.lora_dash_u" in tensors:
            n_dash += 1
            delta += g("lora_dash_u") @ torch.diag(g("lora_dash_delta_sigma")) @ g("lora_dash_vt")
        with torch.no_grad():
            w.copy_((w.double() + delta).float())
    if n_dash == 0:
        fail("tsd_dash.safetensors holds no Dash module")
    return logits(model), len(modules), n_dash


def load_peft(base_dir: Path, adapter: Path, strict: bool):
    base = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, adapter).eval()
    texts = [str(w.message) for w in caught
             if "missing adapter keys" in str(w.message) or "unexpected" in str(w.message).lower()]
    if strict and texts:
        fail(f"PEFT warned while loading {adapter}: {texts}")
    return model, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("base_dir", type=Path)
    parser.add_argument("out_json", type=Path)
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    peft_file = args.ckpt / "adapter_model.safetensors"
    dash_tensors, dash_meta = read(args.ckpt / "tsd_dash.safetensors")
    stored, _ = read(peft_file)
    sha = hashlib.sha256(peft_file.read_bytes()).hexdigest()
    if dash_meta.get("tsd_peft_weights_sha256") != sha:
        fail("tsd_dash.safetensors does not record adapter_model.safetensors' sha256")
    unfolded_cfg = json.loads(dash_meta["tsd_adapter_config"])
    peft_cfg = json.loads((args.ckpt / "adapter_config.json").read_text())
    if any("lora_dash" in k for k in stored):
        fail("adapter_model.safetensors holds Dash tensors PEFT would drop")

    want, n_modules, n_dash = dash_model(args.base_dir, dash_tensors, unfolded_cfg)

    model, _ = load_peft(args.base_dir, args.ckpt, strict=True)
    held = get_peft_model_state_dict(model)
    if set(held) != set(stored):
        fail(f"keys differ: file only {sorted(set(stored) - set(held))}, PEFT only {sorted(set(held) - set(stored))}")
    for k, t in held.items():
        if not torch.equal(t.detach().cpu(), stored[k].to(t.dtype)):
            fail(f"{k} differs between the file and the loaded model")
    unmerged = logits(model)
    merged_model = model.merge_and_unload()
    merged = logits(merged_model)
    d_unmerged = float((unmerged - want).abs().max())
    d_merged = float((merged - want).abs().max())
    if max(d_unmerged, d_merged) >= 1e-4:
        fail(f"PEFT's logits differ from the Dash model's: unmerged {d_unmerged}, merged {d_merged}")

    # The layout before this change: Dash tensors inside adapter_model.safetensors, rank-r config.
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        old.mkdir()
        save_file(dash_tensors, old / "adapter_model.safetensors", metadata={"format": "pt"})
        (old / "adapter_config.json").write_text(json.dumps(unfolded_cfg))
        old_model, old_warnings = load_peft(args.base_dir, old, strict=False)
        d_old = float((logits(old_model.merge_and_unload()) - want).abs().max())

    report = {
        "description": "a raw tsd train --method lora-dash checkpoint loaded by PEFT (scripts/peft_dash_checkpoint_check.py)",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "checkpoint": {
            "peft_type": peft_cfg.get("peft_type"),
            "peft_r": peft_cfg["r"],
            "peft_lora_alpha": peft_cfg["lora_alpha"],
            "dash_r": unfolded_cfg["r"],
            "dash_lora_alpha": unfolded_cfg["lora_alpha"],
            "modules": n_modules,
            "dash_modules": n_dash,
        },
        "input_ids": INPUT_IDS,
        "peft_merged_vs_dash_model_max_abs_diff": d_merged,
        "peft_unmerged_vs_dash_model_max_abs_diff": d_unmerged,
        "old_layout": {
            "what": "the same parametrisation in the pre-change layout (Dash tensors in adapter_model.safetensors, rank-r config), loaded by PEFT",
            "peft_warned": bool(old_warnings),
            "peft_merged_vs_dash_model_max_abs_diff": d_old,
        },
        "logits": merged.tolist(),
    }
    args.out_json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"peft_dash_checkpoint_check: OK: merged {d_merged:.3g}, unmerged {d_unmerged:.3g}, "
          f"old layout {d_old:.3g} -> {args.out_json}")


if __name__ == "__main__":
    main()
