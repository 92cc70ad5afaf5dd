#!/usr/bin/env python3
"""Entry point of :mod:`benchmarks.overhead.bench` (what it does: its docstring; the options: ``--help``)."""

import sys

from benchmarks.overhead.bench import main

sys.exit(main())
