#!/usr/bin/env python3
"""Entry point of :mod:`benchmarks.loadgen_speed` (what it does: its docstring; the options: ``--help``)."""

import sys

from benchmarks.loadgen_speed import main

sys.exit(main())
