# shellcheck shell=bash
# Sourced by scripts/*.sh: create (once) and activate the project's virtualenv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3.11}"
VENV="${SLOROUTER_VENV:-$ROOT/.venv}"
if ! command -v "$PY" >/dev/null 2>&1; then PY=python3; fi
stamp="$VENV/.installed-$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[setup] creating $VENV and installing slorouter (first run only)..." >&2
  "$PY" -m venv "$VENV"
  log="$VENV/install.log"
  if ! { "$VENV/bin/python" -m pip install --upgrade pip && "$VENV/bin/python" -m pip install -e "$ROOT[dev]"; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "[setup] installing failed (full log: $log)" >&2
    exit 1
  fi
  rm -f "$VENV"/.installed-* && touch "$stamp"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
cd "$ROOT"
