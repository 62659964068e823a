#!/usr/bin/env bash
# The large-batch study at digits scale (configs/large_batch/digits_*.toml): C-SGD, D-SGD ring and
# D-SGD exponential at local batch 8 and 32, n = 16, then the large_batch table.
#   tools/large_batch_demo.sh [NRANKS]     (default 4; 16 replicas must split evenly over NRANKS)
set -euo pipefail
cd "$(dirname "$0")/.."
ranks=${1:-4}
export OMP_NUM_THREADS=1
for b in 8 32; do
  for m in csgd ring exp; do
    echo "== digits_b${b}_${m}"
    mpiexec -n "$ranks" python -m hpc_dsgd train "configs/large_batch/digits_b${b}_${m}.toml"
  done
done
python tools/tables.py runs/large_batch_digits --preset large_batch
