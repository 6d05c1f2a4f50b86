#!/usr/bin/env bash
# Everything the GPU half must show, in one run of under 5 minutes on one H200 (issue 11):
# environment, copy/matmul ceilings, the kernel tests compiled, the tree-attention sweep, verify and
# select, a reduced Llama-3.1-8B calibration and a timing-only sim-vs-live validation.
# benchmarks/gpu_check.py has the sections, their limits and the files; docs/GPU.md how to run it.
#
#   benchmarks/gpu_check.sh OUTDIR [--dry-run] [gpu_check.py options]
#
# Uses the image's own python3 (no pip registry there). Packages the image lacks (simpy) come from
# wheels in .whl/ (benchmarks/fetch_wheels.sh fills it here), installed offline into a side folder.
set -uo pipefail
OUTDIR=${1:?usage: benchmarks/gpu_check.sh OUTDIR [--dry-run]}
shift
cd "$(dirname "$0")/.."
if ! python3 -c "import simpy" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/echo_site .whl/*.whl || echo "gpu_check.sh: wheel install failed" >&2
        export PYTHONPATH=/tmp/echo_site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "gpu_check.sh: simpy missing and no .whl/*.whl (run benchmarks/fetch_wheels.sh here first)" >&2
    fi
fi
export PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu_check.py "$OUTDIR" "$@"
