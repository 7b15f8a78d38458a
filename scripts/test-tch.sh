#!/usr/bin/env bash
# Run the model tests on the LibTorch backend (burn-tch): creates a Python venv with
# torch 2.9.0, builds curate with `--features tch` against that libtorch, and runs the model
# and train tests with CURATE_TEST_DEVICE=tch-cpu (or the device given, e.g. tch-cuda:0).
# Not part of default CI: it downloads torch (~3 GB with its CUDA libraries) and builds
# libtorch bindings. Usage: scripts/test-tch.sh [DEVICE]
set -euo pipefail
cd "$(dirname "$0")/.."
device="${1:-tch-cpu}"
venv="${CURATE_TCH_VENV:-$HOME/.cache/curate-tch-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet torch==2.9.0 transformers==5.24.0
export LIBTORCH_USE_PYTORCH=1
export PATH="$venv/bin:$PATH"
# libtorch's shared libraries live inside the torch package.
torch_lib=$("$venv/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}"
# The tch build shares the target directory: cargo keeps burn's artifacts for both feature
# sets side by side, and polars is unaffected.
echo "torch: $("$venv/bin/python" -c 'import torch; print(torch.__version__)'), device: $device"
CURATE_TEST_DEVICE="$device" CURATE_PYTHON="$venv/bin/python" \
  cargo test --release --features tch --test integration -- model:: train::
