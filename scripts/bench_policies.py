#!/usr/bin/env python3
"""Entry point of :mod:`benchmarks.policies` (what it does: its docstring; the options: ``--help``)."""

import sys

from benchmarks.policies import main

sys.exit(main())
