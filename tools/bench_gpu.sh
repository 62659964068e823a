#!/usr/bin/env bash
# The GPU benchmark matrix of the README's table, in one sitting on one GPU:
#   tools/bench_gpu.sh [OUTDIR]        (default bench-gpu/; needs a CUDA device and mpiexec)
# Each line runs `python -m hpc_dsgd bench` and leaves its JSON in OUTDIR; the summary at the end
# prints samples/s (images/s; sentences/s for the nmt_ lines: the Multi30k Transformer on synthetic
# sentences, local batch 64, no CUDA graph) of the D-SGD iteration (local step + data pipeline + gossip
# + Theta + scalar Allreduce).
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
bench in32_n32_1x32_fp32_det 1 --replicas-per-rank 32 --width 3 --classes 1000 --batch-size 64
bench in32_n1_1x1_fp32_det 1 --replicas-per-rank 1 --width 3 --classes 1000 --batch-size 64
bench nmt_n32_1x32_fp32_det 1 --workload translation --replicas-per-rank 32
bench nmt_n1_1x1_fp32_det 1 --workload translation --replicas-per-rank 1
"$py" - "$out" <<'PY'
import glob, json, os, sys
print(f"{'run':<26}{'samples':>10}{'exec':>9}{'graph':>7}{'prec':>6}{'det':>6}{'local ms':>10}{'premade/s':>11}"
      f"{'local/s':>10}{'iter/s':>10}")
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    j = json.load(open(f)); m = j["modes"]
    per_s = lambda mode: m[mode].get("samples_per_s", m[mode].get("images_per_s"))  # older files: images_per_s only
    print(f"{os.path.basename(f)[:-5]:<26}{j.get('samples', 'images'):>10}{j['exec']:>9}{str(j['cuda_graph']):>7}"
          f"{j['precision']:>6}{str(j['deterministic']):>6}{m['local']['ms_per_iteration']:>10.2f}"
          f"{per_s('premade'):>11.0f}{per_s('local'):>10.0f}{per_s('theta'):>10.0f}")
PY
