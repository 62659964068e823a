#!/usr/bin/env python
"""Thin wrapper: `python tools/tables.py --help` (hpc_dsgd/analysis/tables.py; runs, presets, render beside it)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))  # run from a checkout

from hpc_dsgd.analysis.tables import main

if __name__ == "__main__":
    sys.exit(main())
