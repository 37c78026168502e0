#!/usr/bin/env bash
# Builds tsd with the `cuda` feature and runs a short LoRA-Dash training on one GPU, printing
# tokens/s and peak GPU memory. Needs nvcc (CUDA toolkit) and an NVIDIA GPU; run it on a GPU machine.
#
#   scripts/gpu-check.sh [DATA_DIR]     (default: ../shared/data/commonsense/ARC-Easy)
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data/commonsense/ARC-Easy}"
command -v nvcc >/dev/null || { echo "gpu-check: nvcc not found (install the CUDA toolkit)"; exit 2; }
command -v nvidia-smi >/dev/null || { echo "gpu-check: nvidia-smi not found (no NVIDIA driver?)"; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

cargo build --release --features cuda
./target/release/tsd fetch >/dev/null

run=$(mktemp -d)/run
# Sample GPU memory while training runs.
( while sleep 0.5; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; done ) > "$run.mem" 2>/dev/null &
sampler=$!
trap 'kill $sampler 2>/dev/null || true' EXIT
start=$(date +%s.%N)
./target/release/tsd train --model default --data "$data" --out "$run" --device cuda --dtype bf16 \
  --method lora-dash --rank 8 --dash-t 20 --max-steps 60 --batch-size 16 --micro-batch-size 16 \
  --lr 1e-3 --warmup-steps 10 --save-every 30 --max-examples 2000 --val-size 40 --quiet
end=$(date +%s.%N)
kill $sampler 2>/dev/null || true

python3 - "$run" "$run.mem" "$start" "$end" <<'PY'
import json, statistics, sys
run, mem, start, end = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
rec = json.load(open(f"{run}/record.json"))
tps = [s["tokens_per_s"] for s in rec["steps"][5:]] or [s["tokens_per_s"] for s in rec["steps"]]
used = [int(x) for x in open(mem).read().split() if x.strip().isdigit()]
print(f"steps {len(rec['steps'])}, loss {rec['steps'][0]['loss']:.4f} -> {rec['steps'][-1]['loss']:.4f}, "
      f"dash switch at {rec['dash_switch']['step'] if rec['dash_switch'] else None}")
print(f"tokens/s (median after warm-up): {statistics.median(tps):.0f}")
print(f"peak GPU memory (nvidia-smi, MiB): {max(used) if used else 'n/a'}")
print(f"wall: {end - start:.1f} s")
PY
