#!/usr/bin/env bash
# Consensus control on a workstation: the reference run, then dec-phase-1 at targets Xi_max, 1/2 and
# 1/4 Xi_max (configs/demo_control/), then the per-phase summary of each run.
#   tools/demo_control.sh [NRANKS]     (default 4; 16 replicas must split evenly over NRANKS)
set -euo pipefail
cd "$(dirname "$0")/.."
ranks=${1:-4}
export OMP_NUM_THREADS=1
for cfg in reference dec1_xi_max dec1_half dec1_quarter; do
  echo "== $cfg"
  mpiexec -n "$ranks" python -m hpc_dsgd train "configs/demo_control/$cfg.toml"
done
python tools/control_summary.py runs/demo_control
