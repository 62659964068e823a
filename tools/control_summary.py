#!/usr/bin/env python3
"""Per-phase consensus-control summary of traces (see hpc_dsgd/analysis/control.py)."""
import sys

from hpc_dsgd.analysis.control import main

if __name__ == "__main__":
    sys.exit(main())
