#!/usr/bin/env bash
# Fill .whl/ (git-ignored, never committed) with the wheels benchmarks/gpu_check.sh installs offline
# on the GPU image (python3 3.12, x86-64, no registry there). That image lacks only simpy of what
# the toolkit imports (its package list: /work/.library/device/KINDS.md); simpy is pure Python.
# Run here, where pip reaches the registry; then name .whl in the device run's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl simpy==4.1.2
ls -l .whl
