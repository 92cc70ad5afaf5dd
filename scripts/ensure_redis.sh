#!/usr/bin/env bash
# Make sure a real `redis-server` is on this machine for the replica tests (tests/redisserver.py
# starts its own on a free 127.0.0.1 port, without persistence, and stops it by PID).
# Idempotent: does nothing when redis-server is already on PATH. Otherwise installs Debian's
# `redis-server` package with apt-get (as root, or through password-less sudo).
# Exit status: 0 when redis-server is available afterwards, 1 (with the reason) when not.
# scripts/test.sh runs it before pytest.
set -uo pipefail
command -v redis-server >/dev/null 2>&1 && exit 0
main() {
  local sudo=""
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "[setup] redis-server is missing and there is no apt-get here: install redis-server (or valkey-server) yourself" >&2
    return 1
  fi
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo="sudo -n"
    else
      echo "[setup] redis-server is missing and installing it needs root: run 'sudo apt-get install redis-server'" >&2
      return 1
    fi
  fi
  echo "[setup] installing redis-server (Debian package) for the replica tests..." >&2
  local log
  log="$(mktemp -t slorouter-redis-install.XXXXXX)"
  # the package list may be stale in a fresh container: update only if the first try fails
  if ! { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server \
         || { $sudo apt-get update -q && \
              $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server; }; } \
       >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "[setup] installing redis-server failed (full log: $log)" >&2
    return 1
  fi
  rm -f "$log"
  command -v redis-server >/dev/null 2>&1
}
main
