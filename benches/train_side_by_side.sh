#!/usr/bin/env bash
# The training-step comparison in one invocation: PyTorch + PEFT (benches/peft_train_step.py)
# just before and just after `tsd bench train` (LoRA and LoRA-Dash alternating over ROUNDS rounds,
# beside the first PyTorch run and the committed roofline), on this host, with the host named.
#
# Usage: benches/train_side_by_side.sh OUT_DIR [ROUNDS=15] [STEPS=5]
#   FROZEN_PRODUCTS=bf16 compares tsd's bf16 frozen-weight products with PyTorch's bf16 autocast
#   (default f32 against float32).
#   PYTHON (default ~/.venvs/tsd-fixtures/bin/python: torch, transformers, peft, gguf), TSD
#   (default target/release/tsd) and ROOFLINE (default reproductions/bench/roofline.json, the
#   record whose limits the step is set against) may be set.
set -euo pipefail
out=${1:?usage: $0 OUT_DIR [ROUNDS] [STEPS]}
rounds=${2:-15}
steps=${3:-5}
py=${PYTHON:-$HOME/.venvs/tsd-fixtures/bin/python}
tsd=${TSD:-target/release/tsd}
products=${FROZEN_PRODUCTS:-f32}
roofline=${ROOFLINE:-reproductions/bench/roofline.json}
peft_flags=()
[ "$products" = bf16 ] && peft_flags=(--autocast-bf16)
mkdir -p "$out"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "cpu family/model: $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')/$(grep -m1 '^model[[:space:]]*:' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')"
  echo "cores: $(nproc)"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "tsd: $($tsd --version)"
  echo "rounds: $rounds, steps per method and round: $steps, frozen products: $products"
} > "$out/host.txt"
"$py" benches/peft_train_step.py "${peft_flags[@]}" --steps "$steps" --out "$out/peft_before.json" > /dev/null
"$tsd" bench train --frozen-products "$products" --rounds "$rounds" --steps "$steps" --torch "$out/peft_before.json" --roofline "$roofline" --out "$out/train.json"
"$py" benches/peft_train_step.py "${peft_flags[@]}" --steps "$steps" --out "$out/peft_after.json" > /dev/null
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/host.txt"
cat "$out/host.txt"
