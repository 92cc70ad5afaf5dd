#!/usr/bin/env bash
# scripts/bench_overhead.py in the project's virtualenv with the `bench` extra (py-spy, the
# Rust vllm-router), and nginx from the system's packages when it is missing (as root, apt).
# Arguments go to bench_overhead.py, e.g. scripts/bench_overhead.sh --out overhead.json
SLOROUTER_EXTRAS=dev,bench
export SLOROUTER_EXTRAS
source "$(dirname "$0")/_env.sh"
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing nginx (apt-get)..." >&2
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx; } \
      >"$VENV/nginx-install.log" 2>&1 || { tail -n 20 "$VENV/nginx-install.log" >&2; exit 1; }
  else
    echo "nginx is not installed: apt-get install -y nginx (or pass --skip-nginx)" >&2
    exit 1
  fi
fi
exec python scripts/bench_overhead.py "$@"
