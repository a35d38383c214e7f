#!/usr/bin/env bash
# The GPU checks of issue 18 as one command, for a machine with a GPU and
# this project installed (`pip install -e ".[jax,torch,offline,bench]"` with
# CUDA builds of the frameworks). Writes JSON under benchmarks/results/.
#   bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
# Keras: float32 / mixed_bfloat16 / mixed_float16, jit_compile off and on,
# per backend (fine-tune img/s and test accuracy, EfficientNet-Lite0 with
# its real weights, the image example's data).
python benchmarks/precision.py --device gpu --quick \
  --output benchmarks/results/precision_gpu.json
# The plain-PyTorch peer on the same architecture: eager and torch.compile.
python benchmarks/torch_compile_peer.py --device cuda \
  --output benchmarks/results/torch_compile_peer_gpu.json
