#!/usr/bin/env bash
# Where a training step's time goes: a cpu-clock sampling profile (perf record; works where the
# guest exposes no cycle counters) of `tsd bench train --single METHOD`, started after DELAY ms so
# that model loading and the warm-up step stay out of it. Writes OUT (the flat profile by symbol).
#
# Usage: benches/profile_train_step.sh OUT [METHOD=lora] [STEPS=12] [DELAY_MS=5000]
#   TSD (default target/release/tsd) may be set; extra tsd flags go in TSD_FLAGS
#   (e.g. TSD_FLAGS="--frozen-products bf16").
set -euo pipefail
out=${1:?usage: $0 OUT [METHOD] [STEPS] [DELAY_MS]}
method=${2:-lora}
steps=${3:-12}
delay=${4:-5000}
tsd=${TSD:-target/release/tsd}
data=$(mktemp)
trap 'rm -f "$data" "$data.json"' EXIT
# shellcheck disable=SC2086
perf record -q -D "$delay" -e cpu-clock -F 499 -g -o "$data" \
  "$tsd" bench train --single "$method" --steps "$steps" ${TSD_FLAGS:-} > "$data.json" 2>/dev/null
mkdir -p "$(dirname "$out")"
{
  echo "# perf record -D $delay -e cpu-clock -F 499 of: tsd bench train --single $method --steps $steps ${TSD_FLAGS:-}"
  echo "# date: $(date -u +%FT%TZ); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' '); cores: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# median step: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["median_step_seconds"])' "$data.json") s"
  perf report -i "$data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null | awk '/%/ && n++ < 40'
} > "$out"
cat "$out"
