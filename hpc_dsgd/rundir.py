"""A run directory, OUT_DIR/NAME: the names of its files, in one place.

    RUN_DIR/trace.h5           the HDF5 trace (trace.py)
    RUN_DIR/checkpoints/       ckpt-<iteration, 9 digits>/ each (checkpoint.py); phase-K names the end of phase K
    RUN_DIR/run.lock           one writer at a time (runlock.py)
    RUN_DIR/config.toml        the resolved config, written when the run starts (train.py)
    RUN_DIR/tokenizer.json     the translation workload's BPE tokenizer (workloads/translation.py)
    RUN_DIR/campaign.log       a campaign's output of the run (campaign)

Pure standard library: the campaign and the tables use it without importing torch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


def _in_run(name: str) -> property:
    """RUN_DIR/<name> as a read-only property."""
    return property(lambda self: os.path.join(self.path, name), doc=f"RUN_DIR/{name}")


@dataclass(frozen=True)
class RunDir:
    path: str

    TRACE = "trace.h5"
    CHECKPOINTS = "checkpoints"
    LOCK = "run.lock"
    CONFIG = "config.toml"
    TOKENIZER = "tokenizer.json"
    CAMPAIGN_LOG = "campaign.log"

    @classmethod
    def of(cls, cfg) -> RunDir:
        """The run directory of a config (out_dir/name)."""
        return cls(os.path.join(cfg.out_dir, cfg.name))

    @classmethod
    def of_checkpoint(cls, checkpoint: str) -> RunDir:
        """The run whose RUN_DIR/checkpoints/ holds `checkpoint` (a ckpt-... directory or a phase-K alias)."""
        return cls(os.path.normpath(os.path.join(checkpoint, os.pardir, os.pardir)))

    trace = _in_run(TRACE)
    checkpoints = _in_run(CHECKPOINTS)
    lock = _in_run(LOCK)
    config = _in_run(CONFIG)
    tokenizer = _in_run(TOKENIZER)
    campaign_log = _in_run(CAMPAIGN_LOG)

    def checkpoint(self, it: int) -> str:
        """RUN_DIR/checkpoints/ckpt-<it, 9 digits>."""
        return os.path.join(self.checkpoints, f"ckpt-{it:09d}")
