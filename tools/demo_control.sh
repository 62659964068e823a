#!/usr/bin/env bash
# Consensus control on a workstation (configs/demo_control/): the all-gossip reference run; dec-phase-1 at
# targets Xi_max, 1/2 and 1/4 Xi_max; dec-phase-2 at Xi_max (the experiment's own uncontrolled run, whose
# phase-2 Xi_max the 1/2 and 1/4 runs use); then the phase-1 and phase-2 summaries of every run.
#   tools/demo_control.sh [NRANKS]     (default 4; 16 replicas must split evenly over NRANKS)
set -euo pipefail
cd "$(dirname "$0")/.."
ranks=${1:-4}
export OMP_NUM_THREADS=1
for cfg in reference dec1_xi_max dec1_half dec1_quarter dec2_xi_max dec2_half dec2_quarter; do
  echo "== $cfg"
  mpiexec -n "$ranks" python -m hpc_dsgd train "configs/demo_control/$cfg.toml"
done
python tools/control_summary.py runs/demo_control --phase 1
python tools/control_summary.py runs/demo_control --phase 2
