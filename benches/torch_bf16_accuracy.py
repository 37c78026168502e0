#!/usr/bin/env python3
"""The default model's logits in float32 and under torch.autocast bfloat16, the PyTorch peer of `tsd bench bf16`.

`tsd bench bf16 --torch-python PATH` runs this file (compiled into the binary, fed on stdin) with
the GGUF file tsd loads, the token ids of its accuracy batch and a folder to write into. The model
is the same GGUF dequantized to float32 by transformers (copied into a temporary folder first, as
benches/peft_train_step.py does), in eval mode, without attention mask (causal), on
torch.set_num_threads(--threads). Two forwards of the same [batch, seq_len] ids:
- float32: every product in float32;
- bf16: the same model under torch.autocast("cpu", dtype=torch.bfloat16) (PyTorch's bf16 CPU
  path: the linears, LM head included, take bf16 inputs and weights and return bf16, so the
  logits themselves are rounded to bf16; norms and softmax stay float32 under autocast's rules).
Both logits are written as raw little-endian float32 [batch * seq_len, vocab], row-major, to
OUT/f32.bin and OUT/bf16.bin; tsd reads them and computes every metric itself, with the same
functions it uses for its own logits. Prints JSON (versions, threads, shape) on stdout.

Pinned (the versions this was written and checked with): Python 3, torch 2.15.0,
transformers 5.24.0, gguf 0.19.0, numpy 2.4.6.

Usage: python benches/torch_bf16_accuracy.py --gguf MODEL.gguf --ids IDS.json --out DIR
       [--threads 2]   (IDS.json: a JSON list of `batch` lists of `seq_len` token ids)
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import gguf
import numpy
import torch
import transformers
from transformers import LlamaForCausalLM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--ids", type=Path, required=True, help="JSON [batch][seq_len] token ids")
    ap.add_argument("--out", type=Path, required=True, help="folder for f32.bin and bf16.bin")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(a.gguf, Path(d) / a.gguf.name)
        model = LlamaForCausalLM.from_pretrained(d, gguf_file=a.gguf.name, dtype=torch.float32)
    model.eval()
    ids = torch.tensor(json.loads(a.ids.read_text()), dtype=torch.int64)
    batch, seq_len = ids.shape
    with torch.inference_mode():
        f32 = model(input_ids=ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(input_ids=ids).logits
    dtype_bf16 = str(bf16.dtype)
    vocab = f32.shape[-1]
    for name, t in (("f32.bin", f32), ("bf16.bin", bf16)):
        arr = t.float().reshape(batch * seq_len, vocab).contiguous().numpy().astype("<f4", copy=False)
        (a.out / name).write_bytes(arr.tobytes())
    print(json.dumps({
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf"),
        "numpy": numpy.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "batch": batch,
        "seq_len": seq_len,
        "vocab": vocab,
        "bf16_logits_dtype": dtype_bf16,
    }))


def _dist_version(name: str):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # noqa: BLE001 - the version is informative only
        return None


if __name__ == "__main__":
    main()
