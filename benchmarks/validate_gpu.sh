#!/usr/bin/env bash
# GPU runs of the runtime (issue 5), for a session that is lent an H200. Not run yet: no GPU was
# lent to the session that wrote it. One call per shape, each well under the device's 10-minute
# limit (estimate: 1-2 min start, ~1 min model init, 89 grid shapes (22 of them the bs = 1 curve
# points of --curve-tokens) x 7 runs of 10-200 ms each,
# autotuning of the kernels' first launch per shape key, a 2 x 8-step overhead run).
#
#   benchmarks/validate_gpu.sh llama-3.1-8b     -> $OUT/h200_llama-3.1-8b.json
#   benchmarks/validate_gpu.sh qwen3-8b         -> $OUT/h200_qwen3-8b.json
#
# Random bf16 weights of the real shapes (echo_runtime/random_models.py) with a 1-layer EAGLE-style
# draft head; verification through kernels.tree_attention + kernels.tree_verify (CUDA events clock).
# Grid: batch 1..256 x tree tokens per request 1..64 (the kernel's limit) x KV 1k/4k (bs x KV capped
# at 262144 cached tokens = 34 GB of bf16 K/V for an 8B GQA model) + prefill chunks of 512 and 2048.
# Commit the files under traces/calibration/ with this script's command line (it is in each file).
set -euo pipefail
SHAPE=${1:?usage: benchmarks/validate_gpu.sh llama-3.1-8b|qwen3-8b}
DEST=${OUT:-traces/calibration}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -m echo_runtime.cli calibrate --random-shape "$SHAPE" --device cuda --dtype bfloat16 --threads 0 \
    --hardware h200 --batch-sizes 1,4,16,64,256 --tokens-per-request 1,4,16,64 --kv-lens 1024,4096 \
    --draft-depths 2,4,6 --draft-width 4 --prefill-tokens 512,2048 --max-batch-kv-tokens 262144 \
    --repeats 5 --warmup 2 --overhead-steps 8 --out "$DEST/h200_$SHAPE.json"
