#!/usr/bin/env bash
# The first GPU hour, prepared: on one H100/H200, in at most about 8 minutes, one sitting that
#   benchmarks the three workloads (n = 32 on one GPU; tf32 and bf16, deterministic and not; fp32 det for the projection),
#   checks two identical short runs and a resumed run bitwise against an uninterrupted one,
#   runs the quickstart on the GPU, and projects the wall time of Table 2's 27 n = 32 runs from the measured iterations;
# then writes OUTDIR/gpu_check.json and OUTDIR/gpu_check.md (hpc_dsgd/gpucheck.py does the work, in one process).
#   tools/gpu_check.sh [OUTDIR]        (default gpu-check/; BUDGET_S=480 ROUNDS=8 PYTHON=python3)
# Exit status 0 only when every step passed. Not yet run on a GPU: the first sitting is its test.
set -euo pipefail
out=${1:-gpu-check}
py=${PYTHON:-python3}
budget=${BUDGET_S:-480}
cd "$(dirname "$0")/.."
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}  # deterministic cuBLAS (before CUDA starts)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not available"
# The steps stop starting new work once the budget is spent; the outer limit is the budget plus one minute.
timeout $((${budget%.*} + 60)) "$py" -m hpc_dsgd.gpucheck --out "$out" --budget-s "$budget" --rounds "${ROUNDS:-8}"
