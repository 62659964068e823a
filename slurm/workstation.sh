#!/bin/bash
# One hpc_dsgd run on a workstation without SLURM, under mpiexec.
#
#   slurm/workstation.sh NRANKS CONFIG [--set key=value ...]
#
# Runs `mpiexec -n NRANKS python -m hpc_dsgd train CONFIG --resume auto ...` in the current
# directory; if the run stops on request (SIGUSR1/SIGTERM to the ranks: checkpoint, exit 75) it is
# started once more and resumes from that checkpoint. MPIEXEC and HPC_DSGD_PYTHON pick the
# launcher and interpreter; HPC_DSGD_DRY_RUN=1 prints the command ("+ ...") instead of running it.
set -euo pipefail

readonly REQUEUE_EXIT_CODE=75  # hpc_dsgd.signals.REQUEUE_EXIT_CODE

run() {  # run a command, or print it under HPC_DSGD_DRY_RUN=1
    if [[ "${HPC_DSGD_DRY_RUN:-0}" == 1 ]]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

if [[ $# -lt 2 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: slurm/workstation.sh NRANKS CONFIG [--set key=value ...]" >&2
    exit 2
fi
nranks=$1
config=$2
shift 2

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
cmd=("${MPIEXEC:-mpiexec}" -n "$nranks" "${HPC_DSGD_PYTHON:-python}" -m hpc_dsgd train "$config" --resume auto "$@")
rc=0
run "${cmd[@]}" || rc=$?
if [[ $rc -eq $REQUEUE_EXIT_CODE ]]; then
    echo "hpc_dsgd: checkpointed on request (exit $rc): running once more to resume" >&2
    rc=0
    run "${cmd[@]}" || rc=$?
fi
exit "$rc"
