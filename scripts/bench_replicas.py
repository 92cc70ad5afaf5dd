#!/usr/bin/env python3
"""Entry point of :mod:`benchmarks.replicas` (what it does: its docstring; the options: ``--help``)."""

import sys

from benchmarks.replicas import main

sys.exit(main())
