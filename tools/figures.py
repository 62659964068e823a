#!/usr/bin/env python
"""Thin wrapper: `python tools/figures.py --help` (implementation: hpc_dsgd/analysis/figures.py)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))  # run from a checkout

from hpc_dsgd.analysis.figures import main

if __name__ == "__main__":
    sys.exit(main())
