"""Resume and branch rules: which config keys a run may change when it resumes from its own checkpoint, which
ones a branch (a new run started from another run's phase checkpoint) must share with it, and the check
that lists the differences (train._start_state refuses a checkpoint with any).

A config key the checkpoint predates (absent from its recorded config) matches that key's default value:
the behaviour the run had when it was written.
"""
from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable

from .config import DEFAULTS

# Config keys that may change when a run resumes (run control, paths, local resources); every
# other key must agree with the checkpoint. Entries are fnmatch patterns.
RESUME_MUST_MATCH_EXCEPT = ("name", "out_dir", "data_dir", "max_iterations", "trace_flush_seconds",
                            "device", "torch_threads", "checkpoint_*", "keep_checkpoints", "resume",
                            "sharpness_*")  # sharpness: measurements only, the trajectory is the same
# Config keys a branch (a new run started from another run's phase checkpoint) must share with it:
# the model, the data, the optimisation schedule and the trajectory's randomness; the consensus
# policies, their targets and the topology they gossip over are what a branch changes (a dec-phase-2
# ring run branches from a phase-1 checkpoint of an All-Reduce run on the complete graph).
BRANCH_MUST_MATCH = ("model", "width", "dataset", "n", "seed", "epochs", "batch_size", "base_lr",
                     "base_batch", "warmup_epochs", "warmup_lr", "decay_fractions", "decay_factor",
                     "momentum", "nesterov", "weight_decay", "weight_decay_bn", "optimizer", "adam_betas", "adam_eps", "lr_schedule",
                     "warmup_steps", "lr_scale", "label_smoothing", "vocab_size", "max_len", "d_model", "heads",
                     "layers", "d_ff", "dropout", "algorithm")


def saved_config(saved_meta: dict) -> dict:
    """The config dict recorded in a manifest's meta (its "config_json" or "config"), else meta itself."""
    if "config_json" in saved_meta:
        return json.loads(saved_meta["config_json"])
    if isinstance(saved_meta.get("config"), dict):
        return saved_meta["config"]
    return saved_meta


def check_compatible(saved_meta: dict, cfg_dict: dict, keys: Iterable[str] | None = None,
                     exclude: Iterable[str] = ()) -> list[str]:
    """Differences "key: checkpoint=... config=..." between the checkpoint's config and cfg_dict, over
    `keys` (None: every key of either side) minus the fnmatch patterns in `exclude`. Empty = compatible.
    A config key the checkpoint predates (absent from its config) matches the key's default value.
    Resume: check_compatible(m["meta"], cfg.to_dict(), exclude=RESUME_MUST_MATCH_EXCEPT);
    branch: check_compatible(m["meta"], cfg.to_dict(), keys=BRANCH_MUST_MATCH)."""
    saved = saved_config(saved_meta)
    names = list(keys) if keys is not None else sorted(set(saved) | set(cfg_dict))
    patterns = list(exclude)
    absent = "<absent>"
    out = []
    for key in names:
        if any(fnmatch.fnmatchcase(key, p) for p in patterns):
            continue
        a, b = saved.get(key, absent), cfg_dict.get(key, absent)
        if a is absent and key in DEFAULTS and b == DEFAULTS[key]:
            continue  # a key added after the checkpoint was written, at its default: the behaviour the run had
        if a != b:
            out.append(f"{key}: checkpoint={json.dumps(a) if a is not absent else absent} "
                       f"config={json.dumps(b) if b is not absent else absent}")
    return out
