#!/usr/bin/env python3
"""Entry point of :mod:`benchmarks.sim_drift` (what it does: its docstring; the options: ``--help``)."""

import sys

from benchmarks.sim_drift import main

sys.exit(main())
