#!/usr/bin/env bash
# Issue 4's GPU checks as one command for a lent device machine (H100/H200 image:
# Python 3.12 with CUDA torch, no network, no opacus and no cryptography).
#
# Here, once (fetches the missing wheels into the git-ignored .whl/):
#     bash benchmarks/gpu_checks.sh --fetch
# On the device (the `run` tool with carry [".whl"], timeout about 480 s):
#     bash benchmarks/gpu_checks.sh
# It prints the GPU, runs the gpu-marked tests (model, batches and noise on CUDA; the
# MLP, a hooks-mode model in secure mode and a CNN train there; user-level DP-SGD on the
# device: the one-user bound for bk and hooks, the trainer and make_private) and then
# benchmarks/train_gpu.py, whose output is also written to $OUT/train_gpu.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch" ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl opacus==1.6.0 cryptography cffi pycparser
  exit 0
fi

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
out="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import torch, opacus; print("torch", torch.__version__, "opacus", opacus.__version__, "cuda", torch.cuda.is_available())'
python3 -m pytest -p no:cacheprovider -m gpu tests/train/test_trainer.py tests/train/test_user_level_gpu.py 2>&1 | tee "$out/gpu_tests.txt"
python3 benchmarks/train_gpu.py 2>&1 | tee "$out/train_gpu.txt"
