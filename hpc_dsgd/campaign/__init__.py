"""Campaigns: the runs of a paper table as one dependency graph, run locally or queued on SLURM, resumable.

    python -m hpc_dsgd campaign run configs/campaigns/table2.toml [--launcher local|slurm] [--ranks R] [--parallel J]
    python -m hpc_dsgd campaign status configs/campaigns/table2.toml
    python -m hpc_dsgd campaign report configs/campaigns/table2.toml

A plan is a small TOML file, its paths relative to the launch directory (the repository root, as configs'):

    configs = ["configs/table1/ring_n32.toml", "configs/table2/*.toml"]   # files or globs (** recursive)
    seeds = [0, 1, 2]        # one run per config and seed; seed 0 keeps the config's name, seed s gets <name>-s<s>
    ranks = 1                # MPI ranks per run (--ranks wins); 1 = one process holding all n replicas
    report = "reports/table2"
    tables = ["table2"]      # optional: the presets to render (default: every preset a run of the plan fills)
    [slurm]                  # optional sbatch options: partition, account, time, gpus_per_task, cpus_per_task, args
    [set]                    # overrides for every run (as --set; `campaign run PLAN --set K=V` adds more)
    epochs = 300

The graph comes from the runs' own keys: `reference_trace`, every entry of `reference_traces` and
`branch_from` name a run directory (RUN_DIR/trace.h5, RUN_DIR/checkpoints/ckpt-<it>, or the alias
RUN_DIR/checkpoints/phase-K: the phase-end checkpoint of phase K). A directory that is a run of the
plan, under its config's own out_dir or the overridden one, makes an edge; each seed's instance
depends on the same seed's instance of its dependency, and the path is rewritten to where that
instance runs (so `--set out_dir=...` moves the dependencies with the runs). A dependency outside
the plan must already be finished on disk. Unknown plan keys, a glob matching nothing, a bad config,
a missing dependency, two runs with one run directory and a cycle are refused before anything starts.

State: RUN_PARENT/campaign-<plan stem>.json (the runs' common out_dir), rewritten atomically after
every event: per run its config, attempts, failures, last exit code and error, log, job id. The truth
about a run is on disk, though: its trace's `status` attribute (finished, with the same resolved
config: skipped), its run.lock (held by a live process: "running", never started twice), its
checkpoints (`--resume auto` continues a stopped or killed run). A finished run whose config
changed is refused, naming the keys, unless `--rerun NAME` (the old run directory is moved aside,
nothing is deleted). An attempt's outcome is its exit code alone: 0, 75 (stopped through its
checkpoint: resumes), 73 (its run directory was in use by another live run), anything else failed; a
run whose job ended without an exit code while a dependency was not finished (SLURM cancelled it)
is blocked, not failed. A failed run is started again up to --retries times (counted once per
attempt, across invocations; --rerun NAME resets the count).

Layout: plan.py (plans, the graph), disk.py (what a run directory says; each run's kind; an attempt's outcome
from its exit code), state.py (the state file), driver.py (one loop for every launcher; status), launchers/ (the
Launcher interface and registry; local.py, slurm.py), cli.py. The report is hpc_dsgd.analysis.report.

Local launcher: each run is `mpiexec -n R python -m hpc_dsgd train CONFIG --resume auto --set ...`
(or one process for R = 1) in its own session, output appended to RUN_DIR/campaign.log; up to
--parallel runs at once, each as soon as its dependencies finished. SIGINT/SIGTERM to the launcher
become SIGTERM to every running run (mpiexec forwards it to the ranks), which checkpoint and exit 75;
the launcher then exits 75 and the next `campaign run` resumes them. SLURM launcher: one
`sbatch --parsable --dependency=afterok:<ids> slurm/run.sbatch CONFIG --set ...` per run not
finished and not queued, in dependency order, job ids in the state; every sbatch/squeue/sacct call
bounded, and a controller that does not answer stops `campaign run` before it submits anything
(launchers/slurm.py; docs/cluster.md).
"""
from .cli import main
from .plan import CampaignError, Plan, Run, dep_paths, load_plan, split_dep

__all__ = ["CampaignError", "Plan", "Run", "dep_paths", "load_plan", "main", "split_dep"]
