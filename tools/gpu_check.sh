#!/usr/bin/env bash
# The GPU check (see tools/gpu_check.py): set up the GPU extras, then run every stage once and write
# OUT/gpu_check.json and OUT/gpu_check.md. Meant for one H100/H200 and under 10 minutes.
#
#   tools/gpu_check.sh [OUT] [gpu_check.py options ...]        e.g. tools/gpu_check.sh gpu-check --cells 1000000
#
# FAISS GPU: when FAISS sees no GPU yet, Meta's `faiss-gpu` 1.15.1 wheel (sm_90 code) is installed into a folder
# of its own ($GPU_EXTRAS, default .gpu-extras) put first on PYTHONPATH, from $FAISS_GPU_WHEEL (a wheel file, for
# machines without a package index) or else from the package index. When no FAISS GPU can be imported after
# that, the check runs with exact torch kNN on the GPU instead, and says so in its table.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-gpu-check}
shift || true

faiss_gpu() { "$PY" -c "import faiss, sys; sys.exit(0 if faiss.get_num_gpus() > 0 else 1)" 2>/dev/null; }

if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    if ! faiss_gpu; then
        # into a folder of its own, put first on the path: the environment's faiss-cpu stays as it is
        extras=${GPU_EXTRAS:-.gpu-extras}
        if [ -n "${FAISS_GPU_WHEEL:-}" ]; then src="$FAISS_GPU_WHEEL"; else src="faiss-gpu==1.15.1"; fi
        echo "installing $src (FAISS GPU) into $extras"
        if "$PY" -m pip install -q --no-deps --target "$extras" "$src"; then
            export PYTHONPATH="$PWD/$extras${PYTHONPATH:+:$PYTHONPATH}"
        fi
        faiss_gpu || echo "no FAISS GPU importable: the kNN stage uses exact torch kNN on the GPU"
    fi
else
    echo "no CUDA device: running the check's logic on the CPU (pass small --cells / --train-cells)"
fi
exec "$PY" tools/gpu_check.py --out "$OUT" "$@"
