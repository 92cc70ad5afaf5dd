#!/usr/bin/env python3
"""Entry point of :mod:`benchmarks.fuzz.main` (what it does: its docstring; the options: ``--help``)."""

import sys

from benchmarks.fuzz.main import main

sys.exit(main())
