#!/usr/bin/env python3
"""Entry point of :mod:`benchmarks.decide` (what it does: its docstring; the options: ``--help``)."""

import sys

from benchmarks.decide import main

sys.exit(main())
