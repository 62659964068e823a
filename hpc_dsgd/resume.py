"""Where a run starts from: the checkpoint a resume continues (resolve_resume: the newest intact one, or the
one named) and the checkpoint a branch starts from (resolve_branch: a directory, or the phase-K alias of
another run's phase-end checkpoint). Which config keys may differ then is compat.py's.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable

from .checkpoint import CheckpointError, list_checkpoints, read_manifest, verify_checkpoint
from .rundir import RunDir


def resolve_resume(run_dir: str, spec: str, check: Callable[[str, dict], None] | None = None, sizes=None
                   ) -> tuple[str | None, list[tuple[str, str]]]:
    """Which checkpoint to resume from: (path or None, [(skipped path, reason), ...]).

    sizes: the model-size check verify_checkpoint applies (compat.model_sizes).
    check(path, manifest), if given, raises CheckpointError for a checkpoint the caller cannot use (train: a
    meta.loop of the wrong shape, observers.check_loop), which "auto" then skips like a damaged one.
    spec "auto": the newest checkpoint of run_dir that verifies, skipping (and reporting) broken ones;
    (None, []) when the run has no checkpoint at all (a fresh start: `--resume auto` on a first launch).
    Checkpoints present but none intact: CheckpointError listing each one's reason.
    Any other spec is a checkpoint directory (or its name inside run_dir/checkpoints/), verified.
    """
    if spec == "auto":
        paths = list_checkpoints(run_dir)
        skipped = []
        for path in paths:
            try:
                man = verify_checkpoint(path, sizes=sizes)
                if check is not None:
                    check(path, man)
                return path, skipped
            except CheckpointError as e:
                skipped.append((path, str(e)))
        if skipped:
            raise CheckpointError(f"run {run_dir}: none of its {len(skipped)} checkpoint(s) is intact: "
                                  + "; ".join(reason for _, reason in skipped))
        return None, []
    path, inside = spec, os.path.join(RunDir(run_dir).checkpoints, spec)
    if not os.path.isdir(path) and os.path.isdir(inside):
        path = inside
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {spec}: no such directory (nor {inside}); "
                              f"use --resume auto or a ckpt-XXXXXXXXX directory")
    man = verify_checkpoint(path, sizes=sizes)
    if check is not None:
        check(path, man)
    return path, []


PHASE_ALIAS_RE = re.compile(r"^phase-([0-9]{1,6})$")


def resolve_branch(spec: str) -> str:
    """branch_from: a checkpoint directory, or RUN_DIR/checkpoints/phase-K, the checkpoint written at the end of
    phase K of that run (what the generated dec-phase-(K+1) configs name, since the iteration depends on the
    data set size). The alias needs the parent's phase-end checkpoint, read from its manifest (verified later)."""
    m = PHASE_ALIAS_RE.match(os.path.basename(os.path.normpath(spec)))
    if m is None or os.path.isdir(spec):
        return spec
    run_dir, phase = RunDir.of_checkpoint(spec).path, int(m.group(1))
    for path in list_checkpoints(run_dir):
        try:
            man = read_manifest(path)
        except CheckpointError:
            continue
        if man["kind"] == "phase" and man["phase"] == phase:
            return path
    raise CheckpointError(f"branch_from={spec!r}: run {run_dir!r} has no intact checkpoint at the end of phase {phase} "
                          "(has that run finished the phase?)")
