#!/usr/bin/env python3
"""Entry point of :mod:`benchmarks.autoscale` (what it does: its docstring; the options: ``--help``)."""

import sys

from benchmarks.autoscale import main

sys.exit(main())
