#!/usr/bin/env python3
"""PyTorch + PEFT training-step benchmark, the counterpart of `tsd bench train`.

Same model (SmolLM2-135M-Instruct GGUF, dequantized to float32 by transformers), same adapter
(LoRA r=8, alpha=16, dropout 0.05 on q,k,v,up,down of all layers), same batch shape of random token
ids with every position labelled, AdamW, torch.set_num_threads(2). Reports the median step time,
tokens/s and the peak RSS of the process. Writes reproductions/bench/peft_train_step.json.

Usage: python benches/peft_train_step.py [--batch 4 --seq-len 128 --steps 5]
"""

import argparse
import json
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, default=Path.home() / ".cache/tsd/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--autocast-bf16", action="store_true",
                    help="forward and loss under torch.autocast('cpu', bfloat16): PyTorch's bf16 CPU path, "
                         "the peer of `tsd bench train --frozen-products bf16` [default: off, float32]")
    ap.add_argument("--out", type=Path, default=ROOT / "reproductions/bench/peft_train_step.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(a.gguf, Path(d) / a.gguf.name)
        model = LlamaForCausalLM.from_pretrained(d, gguf_file=a.gguf.name, torch_dtype=torch.float32)
    cfg = LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.05,
                     target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab = model.config.vocab_size
    n = a.batch * a.seq_len
    ids = (torch.arange(n, dtype=torch.int64) * 2654435761 % vocab).reshape(a.batch, a.seq_len)
    labels = ((torch.arange(n, dtype=torch.int64) + 7) * 40503 % vocab).reshape(a.batch, a.seq_len)
    times = []
    for s in range(1 + a.steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.autocast_bf16):
            logits = model(input_ids=ids).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(n, vocab), labels.reshape(n))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if s > 0:
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    out = {
        "what": "PyTorch + PEFT LoRA training step (forward, backward, AdamW), CPU "
                + ("float32 weights under torch.autocast bfloat16" if a.autocast_bf16 else "float32"),
        "autocast": "bf16" if a.autocast_bf16 else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "threads": a.threads,
        "batch": a.batch,
        "seq_len": a.seq_len,
        "rank": a.rank,
        "step_seconds": times,
        "median_step_seconds": med,
        "tokens_per_s": n / med,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
