#!/usr/bin/env bash
# The GPU benchmark matrix of the README's table, in one sitting on one GPU:
#   tools/bench_gpu.sh [OUTDIR]        (default bench-gpu/; needs a CUDA device and mpiexec)
# Each line runs `python -m hpc_dsgd bench` and leaves its JSON in OUTDIR; the summary at the end
# prints images/s of the D-SGD iteration (local step + data pipeline + gossip + Theta + scalar Allreduce).
set -euo pipefail
out=${1:-bench-gpu}
mkdir -p "$out"
rounds=${ROUNDS:-20}
py=${PYTHON:-python3}
bench() {  # NAME RANKS ARGS...
  local name=$1 ranks=$2; shift 2
  local cmd=("$py" -m hpc_dsgd bench --device cuda --rounds "$rounds" --json "$out/$name.json" "$@")
  echo "== $name: ranks=$ranks ${*}"
  if [ "$ranks" -gt 1 ]; then mpiexec -n "$ranks" "${cmd[@]}"; else "${cmd[@]}"; fi
}
bench n32_1x32_fp32_det 1 --replicas-per-rank 32
bench n32_1x32_fp32_fast 1 --replicas-per-rank 32 --deterministic false
bench n32_1x32_tf32_fast 1 --replicas-per-rank 32 --deterministic false --precision tf32
bench n32_1x32_bf16_fast 1 --replicas-per-rank 32 --deterministic false --precision bf16
bench n32_1x32_fp32_det_eager 1 --replicas-per-rank 32 --cuda-graph false
bench n32_4x8_fp32_det 4 --replicas-per-rank 8
bench n1_1x1_fp32_det 1 --replicas-per-rank 1
bench n1_1x1_fp32_fast 1 --replicas-per-rank 1 --deterministic false
ROUNDS=5 bench n32_1x32_fp32_det_loop 1 --replicas-per-rank 32 --exec loop
"$py" - "$out" <<'PY'
import glob, json, os, sys
print(f"{'run':<26}{'exec':>9}{'graph':>7}{'prec':>6}{'det':>6}{'local ms':>10}{'premade/s':>11}{'local/s':>10}{'iter/s imgs':>13}")
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    j = json.load(open(f)); m = j["modes"]
    print(f"{os.path.basename(f)[:-5]:<26}{j['exec']:>9}{str(j['cuda_graph']):>7}{j['precision']:>6}{str(j['deterministic']):>6}"
          f"{m['local']['ms_per_iteration']:>10.2f}{m['premade']['images_per_s']:>11.0f}{m['local']['images_per_s']:>10.0f}"
          f"{m['theta']['images_per_s']:>13.0f}")
PY
