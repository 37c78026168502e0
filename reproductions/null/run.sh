#!/usr/bin/env bash
# What random gives: two unrelated random LoRA updates on the default model, inspected one against
# the other, and the same pair with the change rate replaced by enrichment. Writes the records in
# this folder (the adapters themselves are made in a temporary directory and not kept).
#
# usage: reproductions/null/run.sh            (after `cargo build --release`; TSD=path overrides)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
tsd=$(realpath "${TSD:-target/release/tsd}")
src=$(realpath data/adapters/smollm2-arc-lora)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
# Same modules, shapes and per-tensor norms as the real PEFT LoRA; directions at random.
"$tsd" export "$src" rand1 --randomize 1
"$tsd" export "$src" rand2 --randomize 2
home=$("$tsd" fetch | sed 's|/models/.*||')
portable() { sed "s|$home|\$TSD_HOME|g"; }
for by in change-rate enrichment; do
  "$tsd" inspect rand1 --base default --reference rand2 --tsd-by "$by" -q | portable >"$here/unrelated-$by.txt"
  "$tsd" inspect rand1 --base default --reference rand2 --tsd-by "$by" -q --json | portable >"$here/unrelated-$by.json"
done
# Empirical controls on the committed cpu reproduction (README, Reproduction status): two seeds
# of the same setting against each other (a ceiling for "task-specific"), and a random control of
# a run against the full fine-tune reference (needs the reference's weights, which are not
# committed: `tsd reproduce commonsense --preset cpu --only full-ref-s1` re-makes them).
cpu="$here/../commonsense/cpu/runs"
step=checkpoints/step-000200
for r in lora-r1 lora-r16; do
  "$tsd" inspect "$cpu/$r-s1/$step" --base default --reference "$cpu/$r-s2/$step" -q | portable |
    sed "s|$cpu|runs|g" >"$here/seed-$r.txt"
done
ref="$cpu/full-ref-s1/$step"
if [ -f "$ref/model.safetensors" ]; then
  "$tsd" export "$cpu/lora-r16-s1/$step" rand-r16 --randomize 1
  "$tsd" inspect rand-r16 --base default --reference "$ref" -q | portable |
    sed "s|$cpu|runs|g" >"$here/random-vs-full-ref.txt"
  "$tsd" inspect "$cpu/lora-r16-s1/$step" --base default --reference "$ref" -q | portable |
    sed "s|$cpu|runs|g" >"$here/lora-r16-vs-full-ref.txt"
else
  echo "no reference weights at $ref: skipping the random-vs-reference control" >&2
fi
{
  echo "date: $(date -u +%FT%TZ)"
  echo "tsd: $("$tsd" --version) (commit $(git -C "$here" rev-parse --short HEAD))"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
} >"$here/provenance.txt"
echo "wrote the records and provenance.txt in $here"
