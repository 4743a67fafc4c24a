#!/usr/bin/env bash
# GPU benchmark in one command: BART-base-sized model built from its config, bf16, synthetic dialogues, no
# downloads; a few minutes on one GPU. Prints training samples/s, tokens/s, peak memory, MFU and generation
# summaries/s, and writes bench/results/gpu.json.
#
#   bash bench/gpu.sh                      # the first GPU (CUDA_VISIBLE_DEVICES picks another)
#   bash bench/gpu.sh --peak-tflops 989    # MFU on a GPU the script does not know
#   bash bench/gpu.sh --quick              # tiny sizes, CPU is fine (CI); BENCH_QUICK=1 does the same
set -euo pipefail
cd "$(dirname "$0")/.."
python=python3
if [ -x .venv/bin/python ]; then python=.venv/bin/python; fi
exec "$python" bench/gpu.py "$@"
