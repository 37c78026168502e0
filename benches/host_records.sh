#!/usr/bin/env bash
# Every performance record of README's per-host table, on this host, in one invocation: the
# machine's limits (`tsd bench roofline`, PyTorch and the system BLAS beside), the training step
# against PyTorch + PEFT in f32 (ROUNDS interleaved LoRA / LoRA-Dash rounds), and where the CPU has
# AVX512-BF16 the bf16 path against PyTorch's bf16 autocast (`tsd bench bf16` too: its products,
# and its logits on 16 x 128 tokens of every commonsense task beside PyTorch's), and batched
# beam search against transformers' generate. Ends with SUMMARY.md: the table row, every figure
# read from the records written here (benches/host_summary.py).
#
# Usage: benches/host_records.sh [OUT_DIR=reproductions/bench/hosts/<vendor>-f<family>m<model>-<N>c] [ROUNDS=15]
#   Run it on an otherwise idle machine, after `cargo build --release`, from the repository root.
#   PYTHON (default ~/.venvs/tsd-fixtures/bin/python: torch, transformers, peft, gguf; see
#   scripts/requirements-fixtures.txt) and TSD (default target/release/tsd) may be set; the data
#   for generate comes from TSD_DATA, else ../shared/data/commonsense (LLM-Adapters layout).
set -euo pipefail
cpuinfo() { grep -m1 "^$1[[:space:]]*:" /proc/cpuinfo | cut -d: -f2- | tr -d ' '; }
vendor=$(cpuinfo vendor_id | sed 's/GenuineIntel/intel/; s/AuthenticAMD/amd/')
slug="${vendor}-f$(cpuinfo 'cpu family')m$(cpuinfo model)-$(nproc)c"
out=${1:-reproductions/bench/hosts/$slug}
rounds=${2:-15}
export PYTHON=${PYTHON:-$HOME/.venvs/tsd-fixtures/bin/python}
export TSD=${TSD:-target/release/tsd}
if ! "$PYTHON" -c 'import torch, transformers, peft, gguf' 2>/dev/null; then
  echo "host_records: $PYTHON cannot import torch, transformers, peft and gguf (set PYTHON; see scripts/requirements-fixtures.txt)" >&2
  exit 2
fi
[ -x "$TSD" ] || { echo "host_records: no tsd binary at $TSD (cargo build --release, or set TSD)" >&2; exit 2; }
# A BLAS told which kernels to take measures those, not the ones it would pick for this CPU.
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE GOTO_NUM_THREADS OPENBLAS_NUM_THREADS OMP_NUM_THREADS
mkdir -p "$out"
bf16=no
grep -qw avx512_bf16 /proc/cpuinfo && bf16=yes
{
  echo "date: $(date -u +%FT%TZ)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "vendor/family/model: $(cpuinfo vendor_id)/$(cpuinfo 'cpu family')/$(cpuinfo model)"
  echo "cores: $(nproc); avx512_bf16: $bf16; hypervisor: $(grep -qw hypervisor /proc/cpuinfo && echo yes || echo no)"
  echo "tsd: $($TSD --version) (git $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$out/host.txt"
step() { echo "== $(date -u +%T) $*" >&2; }
step roofline
"$TSD" bench roofline --torch-python "$PYTHON" --out "$out/roofline.json" > "$out/roofline.txt"
step "training step, f32, $rounds rounds"
ROOFLINE="$out/roofline.json" benches/train_side_by_side.sh "$out/train-side-by-side" "$rounds" > /dev/null
if [ "$bf16" = yes ]; then
  step "training step, bf16 products, 7 rounds"
  FROZEN_PRODUCTS=bf16 ROOFLINE="$out/roofline.json" \
    benches/train_side_by_side.sh "$out/train-side-by-side-bf16" 7 > /dev/null
  step "bf16 products and accuracy"
  "$TSD" bench bf16 --batch 16 --torch-python "$PYTHON" --out "$out/bf16.json" > "$out/bf16.txt"
fi
step "generate and loglik against transformers"
"$PYTHON" benches/eval_generate.py --tsd "$TSD" --batch-sizes 1,16 --per-task 8 \
  --out "$out/eval_generate.json" --loglik-out "$out/eval_loglik.json" > "$out/eval_generate.txt"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/host.txt"
python3 benches/host_summary.py "$out" > "$out/SUMMARY.md"
cat "$out/SUMMARY.md"
