#!/usr/bin/env bash
# The GPU checks in one command, for a CUDA machine lent for a few minutes:
#   bash scripts/gpu_check.sh                  # CUDA tests, then the bench's small default
#   bash scripts/gpu_check.sh --max-tokens 128 # extra flags go to the bench (gpu_bench --help)
# 1. every CUDA test (tests/test_gpu.py and the engine's GPU path: greedy == HF, graphs == eager);
# 2. week2_serving.engine.gpu_bench: engine vs HF generate at batch 1 and 32, eager vs CUDA
#    graphs, on a random-weight model of Qwen2.5-0.5B's shape -> runs/week2/engine-gpu/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA device here")'
"$PY" -m pytest -q -rs tests/test_gpu.py tests/test_week2_engine_gpu_path.py
"$PY" -m week2_serving.engine.gpu_bench --max-tokens 64 --repeats 3 "$@"
