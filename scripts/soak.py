#!/usr/bin/env python3
"""Entry point of :mod:`benchmarks.soak` (what it does: its docstring; the options: ``--help``)."""

import sys

from benchmarks.soak import main

sys.exit(main())
