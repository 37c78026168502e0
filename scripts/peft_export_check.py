#!/usr/bin/env python3
"""Load adapters written by ``tsd export`` in real PEFT and check they mean what PEFT saved.

EXPORT_ROOT holds one directory per feature adapter of ``tests/fixtures/peft-features.json``,
named ``<fixture>-<adapter name>`` (what ``tsd export FIXTURE OUT --adapter-name NAME`` wrote).
For each, the script loads the fixture's base with ``LlamaForCausalLM.from_pretrained`` and the
export with ``PeftModel.from_pretrained(..., is_trainable=True)``, and fails unless

* PEFT loads it without missing or unexpected adapter keys,
* the file's keys, shapes and values equal the loaded model's adapter state dict,
* ``get_nb_trainable_parameters()`` equals the count recorded for PEFT's own save, and
* the logits of the recorded input ids equal the recorded ones (max |diff| < 1e-5).

It writes OUT.json with the per-adapter results.

Usage (from the repository root, with the fixtures virtualenv)::

    python scripts/peft_export_check.py EXPORT_ROOT OUT.json
"""

import argparse
import json
import sys
import warnings
from pathlib import Path

import peft
import torch
import transformers
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from transformers import LlamaForCausalLM

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def fail(msg: str) -> None:
    print(f"peft_export_check: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(export: Path, fixture: dict, rec: dict) -> dict:
    base = LlamaForCausalLM.from_pretrained(FIX / fixture["base_dir"], dtype=torch.float32).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, export, is_trainable=True).eval()
    for w in caught:
        text = str(w.message)
        if "missing adapter keys" in text or "unexpected" in text.lower():
            fail(f"{export.name}: PEFT warned while loading: {text}")
    with safe_open(export / "adapter_model.safetensors", framework="pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    held = get_peft_model_state_dict(model)
    if set(held) != set(stored):
        fail(f"{export.name}: keys differ: file only {sorted(set(stored) - set(held))}, "
             f"PEFT only {sorted(set(held) - set(stored))}")
    for k, t in held.items():
        if not torch.equal(t.detach().cpu(), stored[k].to(t.dtype)):
            fail(f"{export.name}: {k} differs between the file and the loaded model")
    trainable, _ = model.get_nb_trainable_parameters()
    if trainable != rec["trainable"]:
        fail(f"{export.name}: {trainable} trainable parameters, PEFT's own save has {rec['trainable']}")
    with torch.no_grad():
        logits = model(torch.tensor(fixture["input_ids"])).logits.double()
    diff = float((logits - torch.tensor(rec["logits"], dtype=torch.float64)).abs().max())
    if diff > 1e-5:
        fail(f"{export.name}: logits differ from PEFT's own save by {diff}")
    return {"tensors": len(stored), "trainable": trainable, "logits_max_abs_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_root", type=Path)
    parser.add_argument("out_json", type=Path)
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    features = json.loads((FIX / "peft-features.json").read_text())["fixtures"]
    results = {}
    for dir_name, fixture in features.items():
        for name, rec in fixture["adapters"].items():
            export = args.export_root / f"{dir_name}-{name}"
            if not export.is_dir():
                fail(f"{export} not found")
            results[f"{dir_name}/{name}"] = check(export, fixture, rec)
    report = {
        "description": "tsd export of each PEFT feature fixture, loaded by PEFT (scripts/peft_export_check.py)",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "adapters": results,
    }
    args.out_json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"peft_export_check: OK: {len(results)} exports -> {args.out_json}")


if __name__ == "__main__":
    main()
