"""Stop requests by signal: checkpoint, then exit REQUEUE_EXIT_CODE so the batch script requeues.

SLURM sends SIGUSR1 to every task some minutes before the time limit (`#SBATCH --signal=USR1@180`)
and SIGTERM on preemption or scancel. The handler only sets a flag: the training loop reads
`requested()` once per iteration and the ranks agree on it through the per-iteration Allreduce, so
every rank stops after the same iteration, writes a checkpoint and exits REQUEUE_EXIT_CODE.

Before the first iteration (checking the config, building the ImageNet-32 cache, training the
Multi30k tokenizer) there is nothing to checkpoint: the preparation polls `check_stop(what)` between
its steps (and while a long native call runs in a child process it can kill), which raises
StopBeforeStart; the command line removes nothing but the step's temporaries, says what was stopped
and exits REQUEUE_EXIT_CODE, so a requeued job starts the preparation again.
"""
from __future__ import annotations

import signal
from collections.abc import Iterable

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "checkpointed on request, run me again"; slurm/*.sbatch requeue on it
DEFAULT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
_active: list["StopRequest"] = []  # the StopRequests installed, innermost last


class StopBeforeStart(Exception):
    """A stop signal arrived during the preparation, before the first iteration: nothing to checkpoint."""


def check_stop(what: str) -> None:
    """StopBeforeStart naming `what` if a signal reached the innermost installed StopRequest."""
    if _active and _active[-1].requested():
        raise StopBeforeStart(f"stop requested by signal {_active[-1].name} during {what}")


def stop_watch_active() -> bool:
    """Whether a StopRequest is installed (a long preparation step should then stay interruptible)."""
    return bool(_active)


class StopRequest:
    """Installs flag-only handlers for `signals` (main thread only); restore() puts the old ones back.

    Usable as a context manager. `signum` is the first signal received (None before any)."""

    def __init__(self, signals: Iterable[int] = DEFAULT_SIGNALS):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        for s in signals:
            self._previous[s] = signal.signal(s, self._handle)
        _active.append(self)

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum

    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str | None:
        """Name of the signal received ("SIGUSR1"), or None."""
        return signal.Signals(self.signum).name if self.signum is not None else None

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
        if self in _active:
            _active.remove(self)

    def __enter__(self) -> StopRequest:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
