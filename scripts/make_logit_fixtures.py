#!/usr/bin/env python3
"""Reference logits from Hugging Face transformers, for tsd's candle LLaMA implementation.

Writes tests/fixtures/tiny-llama-logits.json: logits of tests/fixtures/tiny-llama (float32) for a
fixed batch of token ids, every position, so a Rust test can compare tsd's forward pass (RMSNorm,
rotary embeddings, grouped-query attention, SwiGLU, LM head) against transformers'.

With --gguf PATH it also writes tests/fixtures/smollm2-logits.json: the default model loaded by
transformers' own GGUF reader (dequantized, Q/K un-permuted), last-position logits of a prompt.

Usage: python scripts/make_logit_fixtures.py [--gguf PATH]
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"


def tiny() -> None:
    model = LlamaForCausalLM.from_pretrained(FIX / "tiny-llama", torch_dtype=torch.float32).eval()
    ids = [[1, 5, 77, 3, 100, 42, 9, 127], [8, 8, 8, 64, 2, 0, 33, 90]]
    with torch.no_grad():
        logits = model(torch.tensor(ids)).logits.double()
    out = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "model": "tiny-llama",
        "input_ids": ids,
        "logits": logits.tolist(),
    }
    (FIX / "tiny-llama-logits.json").write_text(json.dumps(out))


def smollm2(gguf: Path) -> None:
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(gguf, Path(d) / gguf.name)
        model = LlamaForCausalLM.from_pretrained(d, gguf_file=gguf.name, torch_dtype=torch.float32).eval()
    ids = [504, 3575, 282, 4649, 314]  # "The capital of France is"
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].double()
    top = torch.topk(logits, 10)
    out = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "model": gguf.name,
        "input_ids": ids,
        "top10_ids": top.indices.tolist(),
        "top10_logits": top.values.tolist(),
        "logsumexp": torch.logsumexp(logits, 0).item(),
    }
    (FIX / "smollm2-logits.json").write_text(json.dumps(out, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path)
    a = ap.parse_args()
    torch.manual_seed(0)
    tiny()
    if a.gguf:
        smollm2(a.gguf)


if __name__ == "__main__":
    main()
