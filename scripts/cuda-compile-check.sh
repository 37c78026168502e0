#!/usr/bin/env bash
# Compiles tsd's library with the `cuda` feature on a machine without a GPU or CUDA toolkit:
# NVIDIA's compiler, headers and libcu++ come from PyPI wheels into a throw-away venv, candle's CUDA
# kernels are compiled to PTX for one architecture, and every crate is type-checked and built.
# The final link of the binary needs libcuda (the driver), cuBLAS, cuRAND and NVRTC, which a GPU
# machine has; `scripts/gpu-check.sh` does that build and a training run there.
#
#   scripts/cuda-compile-check.sh [COMPUTE_CAP]     (default 90, i.e. sm_90)
#
# Took ~12 min on 2 cores from clean (its own target directory, target/cuda-check); the wheels
# take ~370 MB (target/cuda-check-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
cap="${1:-90}"
venv="${CUDA_CHECK_VENV:-target/cuda-check-venv}"
ver=13.4.92 # nvcc, runtime headers, crt and NVVM must be one release; cudarc knows up to 13.4
python3 -m venv "$venv"
"$venv/bin/pip" install -q "nvidia-cuda-nvcc==$ver" "nvidia-cuda-runtime==$ver" \
  "nvidia-cuda-crt==$ver" "nvidia-nvvm==$ver" "nvidia-cuda-cccl==13.3.5.0.6"
cuda=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
"$cuda/bin/nvcc" --version | tail -1
PATH="$cuda/bin:$PATH" CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_COMPUTE_CAP="$cap" \
  CARGO_TARGET_DIR=target/cuda-check cargo build --release --locked --features cuda --lib
echo "cuda-compile-check: tsd's library with --features cuda built (kernels for sm_$cap)"
