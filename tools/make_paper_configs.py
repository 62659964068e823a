#!/usr/bin/env python3
"""Thin wrapper: `python tools/make_paper_configs.py [--out DIR] [--tuned FILE]` (hpc_dsgd/paper_configs.py)
writes the config files of the paper's tables, Figure 3, the large-batch study and the learning-rate sweeps
from configs/tuned_lr.toml; a learning-rate file with a missing or bad entry is refused with one line and
nothing is written."""
import importlib
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))  # run from a checkout
_gen = importlib.import_module("hpc_dsgd.paper_configs")
main, cli = _gen.main, _gen.cli  # main(argv) -> the files written (the tests call it); cli: one line on a bad file

if __name__ == "__main__":
    sys.exit(cli())
