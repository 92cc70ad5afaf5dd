#!/usr/bin/env python3
"""Entry point of :mod:`benchmarks.real.bench` (what it does: its docstring; the options: ``--help``)."""

import sys

from benchmarks.real.bench import main

sys.exit(main())
