#!/usr/bin/env python3
"""Entry point of :mod:`benchmarks.vllm_cpu` (what it does: its docstring; the options: ``--help``)."""

import sys

from benchmarks.vllm_cpu import main

sys.exit(main())
