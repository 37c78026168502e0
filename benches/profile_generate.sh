#!/usr/bin/env bash
# Where batched beam search's time goes: a cpu-clock sampling profile (perf record; works where the
# guest exposes no cycle counters) of `tsd eval --protocol generate` on the first PER_TASK boolq and
# ARC-Easy test examples at BATCH examples per search, started after DELAY ms so that loading the
# model stays out of it. Writes OUT (the flat profile by symbol).
#
# Usage: benches/profile_generate.sh OUT [BATCH=16] [PER_TASK=8] [DELAY_MS=1500]
#   TSD (default target/release/tsd) and TSD_DATA (default ../shared/data/commonsense) may be set.
set -euo pipefail
out=${1:?usage: $0 OUT [BATCH] [PER_TASK] [DELAY_MS]}
batch=${2:-16}
per_task=${3:-8}
delay=${4:-1500}
tsd=${TSD:-target/release/tsd}
data_dir=${TSD_DATA:-../shared/data/commonsense}
data=$(mktemp)
trap 'rm -f "$data"' EXIT
perf record -q -D "$delay" -e cpu-clock -F 499 -g -o "$data" \
  "$tsd" eval -q --json --data "$data_dir" --tasks boolq,ARC-Easy --limit "$per_task" \
  --protocol generate --batch-size "$batch" > /dev/null 2>&1
mkdir -p "$(dirname "$out")"
{
  echo "# perf record -D $delay -e cpu-clock -F 499 of: tsd eval --protocol generate --tasks boolq,ARC-Easy --limit $per_task --batch-size $batch"
  echo "# date: $(date -u +%FT%TZ); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' '); cores: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg)"
  perf report -i "$data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null | awk '/%/ && n++ < 40'
} > "$out"
cat "$out"
