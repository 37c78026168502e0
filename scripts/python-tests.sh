#!/usr/bin/env bash
# The Python tests: builds the tsd wheel (maturin, reusing `cargo build --release`'s artifacts),
# installs it into a venv with torch + transformers + peft from PyPI (python/requirements-test.txt)
# and runs pytest on real Trainer runs of the tiny LLaMA (python/tests/). scripts/test.sh runs it
# after cargo test.
#
# usage: scripts/python-tests.sh [PYTEST ARGS...]
#
# The venv is made once per requirements file, in $TSD_PY_VENV (default
# ${XDG_CACHE_HOME:-~/.cache}/tsd-python/venv-<sha256 of the requirements, 12 hex>), and reused
# while that file is unchanged; the wheel is reinstalled every time. Needs Python 3 with venv and
# pip, and the Rust toolchain (for the wheel).
set -euo pipefail
cd "$(dirname "$0")/.."

req=python/requirements-test.txt
hash=$(sha256sum "$req" | cut -c1-12)
venv=${TSD_PY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tsd-python/venv-$hash}

echo "== Python test environment in $venv"
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  t0=$(date +%s)
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$req"
  touch "$venv/.complete"
  echo "installed $req in $(( $(date +%s) - t0 )) s"
else
  echo "reusing it ($req unchanged)"
fi

echo "== the wheel (maturin build --release: cargo's release artifacts reused)"
rm -rf target/wheels
t0=$(date +%s)
"$venv/bin/maturin" build --release --locked --quiet --out target/wheels
echo "built $(ls target/wheels) in $(( $(date +%s) - t0 )) s"
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps target/wheels/tsd-*.whl

echo "== pytest (python/tests)"
# From outside the source tree, so `import tsd` is the installed package, not python/tsd.
cd python/tests
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@" .
