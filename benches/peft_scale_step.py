#!/usr/bin/env python3
"""PyTorch + PEFT training steps on a random LLaMA-shaped model on one GPU, the peer of `tsd bench scale`.

Same shape (a transformers LlamaConfig from tsd's built-in data/configs/<config>.json, layers
overridable), base weights in bf16 (or --dtype), LoRA r=8, alpha=16, dropout 0.05 on
q,k,v,up,down of every layer (PEFT keeps adapter weights in float32 over a bf16 base), AdamW
lr 1e-4, a fixed batch of random token ids with every position labelled. Reports the median step
time after one warm-up step, tokens/s and peak GPU memory (torch.cuda.max_memory_allocated).
PEFT has no LoRA-Dash: this is the LoRA step.

Usage (on a CUDA machine with torch, transformers and peft):
  python benches/peft_scale_step.py [--config llama-7b --layers 32 --batch 4 --seq-len 256 --steps 6 --out FILE]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="llama-7b")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a smoke check of this script)")
    ap.add_argument("--out", type=Path, default=ROOT / "reproductions/bench/peft_scale_step.json")
    a = ap.parse_args()
    if a.steps < 2:
        ap.error("--steps must be at least 2 (one warm-up step)")
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[a.dtype]
    path = Path(a.config)
    if not path.exists():
        path = ROOT / "data/configs" / f"{a.config}.json"
    cfg = json.loads(path.read_text())
    if a.layers is not None:
        cfg["num_hidden_layers"] = a.layers
    config = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "torch_dtype") and not k.startswith("_")})
    cuda = a.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    torch.manual_seed(1)
    t0 = time.perf_counter()
    with torch.device(a.device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    sync()
    load_s = time.perf_counter() - t0
    lcfg = LoraConfig(
        r=a.rank,
        lora_alpha=2 * a.rank,
        lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lcfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adapter_dtypes = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad})
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (a.batch, a.seq_len), generator=g).to(a.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for _ in range(a.steps):
        sync()
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - t)
        losses.append(loss.item())
    med = statistics.median(times[1:])
    rec = {
        "what": "PyTorch + PEFT LoRA training step on a random LLaMA-shaped model (GPU)",
        "config": a.config,
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "dtype": a.dtype,
        "adapter_dtypes": adapter_dtypes,
        "batch": a.batch,
        "seq_len": a.seq_len,
        "rank": a.rank,
        "trainable_params": trainable,
        "load_seconds": load_s,
        "step_seconds": times,
        "median_step_seconds": med,
        "tokens_per_s": a.batch * a.seq_len / med,
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "losses": losses,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=2) + "\n")
    tmp.replace(a.out)
    print(json.dumps(rec, indent=2))


if __name__ == "__main__":
    main()
