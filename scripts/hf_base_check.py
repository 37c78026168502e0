#!/usr/bin/env python3
"""Check the directory ``tsd fetch --hf-dir`` writes in the real transformers, and an adapter
``tsd export --base-name`` points at it in the real PEFT.

HF_DIR is what ``tsd fetch --hf-dir HF_DIR`` wrote; ADAPTER is what
``tsd export SOME_ADAPTER ADAPTER --base-name HF_DIR`` wrote. The script

* loads ``AutoModelForCausalLM.from_pretrained(HF_DIR)`` and ``AutoTokenizer.from_pretrained(HF_DIR)``
  (local files only), encodes TEXT and a chat rendered by the tokenizer's chat template;
* loads ``AutoPeftModelForCausalLM.from_pretrained(ADAPTER)`` (the three lines of README's first
  screen; the base comes from the adapter's ``base_model_name_or_path``), failing on missing or
  unexpected adapter keys;
* records, for the ids of TEXT, the logits of both models at every position for the token ids
  PROBE and the top 10 at the last position.

It writes OUT.json (no machine path in it); ``tests/hf_base.rs`` compares tsd's logits and
tokenization with it.

Usage (from the repository root, with the fixtures virtualenv)::

    python scripts/hf_base_check.py HF_DIR ADAPTER OUT.json
"""

import argparse
import json
import sys
import warnings
from pathlib import Path

import peft
import torch
import transformers
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM, AutoTokenizer

TEXT = "Question: Which is heavier, a kilogram of iron or a kilogram of feathers?\nAnswer:"
CHAT = [{"role": "user", "content": "Name 3 colours."}]
PROBE = list(range(0, 49152, 1009)) + [2, 28, 198, 314]


def fail(msg: str) -> None:
    print(f"hf_base_check: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def record(model, ids) -> dict:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    top = torch.topk(logits[-1], 10)
    return {
        "probe_logits": logits[:, PROBE].tolist(),
        "top10_ids": top.indices.tolist(),
        "top10_logits": top.values.tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hf_dir", type=Path)
    parser.add_argument("adapter", type=Path)
    parser.add_argument("out_json", type=Path)
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    torch.use_deterministic_algorithms(True)

    tok = AutoTokenizer.from_pretrained(args.hf_dir, local_files_only=True)
    ids = tok(TEXT)["input_ids"]
    chat_text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    chat_ids = tok(chat_text)["input_ids"]

    base = AutoModelForCausalLM.from_pretrained(args.hf_dir, dtype=torch.float32, local_files_only=True).eval()
    base_rec = record(base, ids)
    del base

    declared = json.loads((args.adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    if Path(declared).resolve() != args.hf_dir.resolve():
        fail(f"the adapter declares {declared!r}, not HF_DIR")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = AutoPeftModelForCausalLM.from_pretrained(args.adapter, dtype=torch.float32).eval()
    for w in caught:
        text = str(w.message)
        if "missing adapter keys" in text or "unexpected" in text.lower():
            fail(f"PEFT warned while loading the adapter: {text}")
    adapted_rec = record(model, ids)
    merged_rec = record(model.merge_and_unload(), ids)
    d = max(abs(a - b) for ra, rb in zip(adapted_rec["probe_logits"], merged_rec["probe_logits"])
            for a, b in zip(ra, rb))
    report = {
        "description": "tsd fetch --hf-dir loaded by transformers, and a tsd export --base-name adapter on it by AutoPeftModelForCausalLM (scripts/hf_base_check.py)",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "tokenizer": {"text": TEXT, "ids": ids, "chat": CHAT, "chat_text": chat_text, "chat_ids": chat_ids},
        "probe_ids": PROBE,
        "base": base_rec,
        "adapter": {
            "config_r": json.loads((args.adapter / "adapter_config.json").read_text())["r"],
            "peft_unmerged_vs_merged_max_abs_diff": d,
            **merged_rec,
        },
    }
    args.out_json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"hf_base_check: OK -> {args.out_json}")


if __name__ == "__main__":
    main()
