#!/usr/bin/env python3
"""Entry point of :mod:`benchmarks.overload` (what it does: its docstring; the options: ``--help``)."""

import sys

from benchmarks.overload import main

sys.exit(main())
