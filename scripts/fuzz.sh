#!/usr/bin/env bash
# Fuzzes every parser of untrusted bytes for SECONDS per target (default 60), without the tsd
# binary: builds and runs the stable-Rust harness `examples/fuzz.rs` (tests/fuzz_harness/).
# Usage: scripts/fuzz.sh [SECONDS] [extra fuzz args, e.g. --seed 2 gguf tokenizer-json]
# Findings are saved under target/fuzz-crashes/; statistics go to reproductions/reliability/fuzz.json.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
cargo build --release --example fuzz
mkdir -p reproductions/reliability
exec nice -n 10 target/release/examples/fuzz --seconds "$secs" --crashes target/fuzz-crashes \
  --json reproductions/reliability/fuzz.json "$@"
