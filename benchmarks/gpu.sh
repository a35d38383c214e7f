#!/usr/bin/env bash
# The GPU checks of issues 18 and 22 as one command, for a machine with a GPU
# and this project installed (`pip install -e ".[jax,torch,offline,bench]"`
# with CUDA builds of the frameworks). Writes JSON under benchmarks/results/.
#   bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
status=0
# Issue 22, first (it fits a 10-minute call): Keras fine-tune img/s per
# backend, float32 and mixed_bfloat16, against PyTorch eager and
# torch.compile; peak matmul and model FLOP utilisation. Exit status 2: no
# backend sees a GPU (it says what is missing), so nothing else would run.
python benchmarks/run.py --device gpu --budget-s 480 \
  --output benchmarks/results/benchmark_gpu.json || status=$?
[ "$status" = 2 ] && exit 2
# Keras: float32 / mixed_bfloat16 / mixed_float16, jit_compile off and on,
# per backend (fine-tune img/s and test accuracy, EfficientNet-Lite0 with
# its real weights, the image example's data).
python benchmarks/precision.py --device gpu --quick \
  --output benchmarks/results/precision_gpu.json || status=1
# The plain-PyTorch peer on the same architecture: eager and torch.compile.
python benchmarks/torch_compile_peer.py --device cuda \
  --output benchmarks/results/torch_compile_peer_gpu.json || status=1
exit $status
