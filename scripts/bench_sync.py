#!/usr/bin/env python3
"""Entry point of :mod:`benchmarks.sync` (what it does: its docstring; the options: ``--help``)."""

import sys

from benchmarks.sync import main

sys.exit(main())
