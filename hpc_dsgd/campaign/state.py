"""The campaign's state file, RUN_PARENT/campaign-<plan stem>.json: per run its attempts, failures, last job id,
status, exit code and error, log. Written with fileio.atomic_write_json (exclusive temporary, fsync, rename: a
planted link is never written through); read with a bounded, typed reader: a file of the wrong shape is one line
naming the file and the key, never a traceback, and never silently replaced (its job ids say what is queued).
"""
from __future__ import annotations

import os

from ..fileio import FileFormatError, atomic_write_json, read_json_bounded
from .plan import CampaignError

STATE_MAX_BYTES = 64 << 20
# The typed keys of a run's entry; others are kept as they are.
RUN_KEYS = {"attempts": int, "failures": int, "job_id": str, "status": str, "rc": (int, type(None)), "error": str,
            "log": str, "settled": str, "pid": int, "log_offset": int, "submit_uncertain": bool}


def _check(path: str, data) -> dict:
    def bad(key: str, value, want: str):
        return CampaignError(f"campaign state {path}: {key} is {type(value).__name__} {_short(value)}, need {want}; "
                             f"it is not a state this program wrote: move it aside (its job ids say what is queued)")

    if not isinstance(data, dict):
        raise bad("the file", data, "a JSON object with a 'runs' table")
    runs = data.get("runs", {})
    if not isinstance(runs, dict):
        raise bad("key 'runs'", runs, "a table of runs (run name -> its entry)")
    for name, st in runs.items():
        if not isinstance(st, dict):
            raise bad(f"key 'runs.{name}'", st, "a table (attempts, failures, job_id, ...)")
        for k, typ in RUN_KEYS.items():
            v = st.get(k)
            if k in st and (not isinstance(v, typ) or isinstance(v, bool) and typ is int
                            or k in ("attempts", "failures") and v < 0):
                raise bad(f"key 'runs.{name}.{k}'", v, {int: "an integer >= 0", str: "a string", bool: "true or false"}
                          .get(typ, "an integer or null"))
    for k in ("plan", "launcher"):
        if k in data and not isinstance(data[k], str):
            raise bad(f"key '{k}'", data[k], "a string")
    data["runs"] = runs
    return data


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


class State:
    """The state file's content (`data`), loaded at construction, saved atomically."""

    def __init__(self, path: str):
        self.path = path
        self.data: dict = {"runs": {}}
        if os.path.lexists(path):
            try:
                self.data = _check(path, read_json_bounded(path, STATE_MAX_BYTES, "campaign state"))
            except FileFormatError as e:
                raise CampaignError(f"{e}; move it aside (its job ids say what is queued)") from None

    @property
    def runs(self) -> dict:
        return self.data["runs"]

    def run(self, name: str) -> dict:
        return self.runs.setdefault(name, {"attempts": 0, "failures": 0})

    def save(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        atomic_write_json(self.path, self.data)
