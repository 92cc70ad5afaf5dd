# shellcheck shell=bash
# Sourced by scripts/*.sh: create (once) and activate the project's virtualenv.
# SLOROUTER_EXTRAS: the pyproject extras to install (default `dev`; scripts/bench_overhead.sh
# asks for `dev,bench`). A venv installed with `dev,bench` also serves `dev`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3.11}"
VENV="${SLOROUTER_VENV:-$ROOT/.venv}"
EXTRAS="${SLOROUTER_EXTRAS:-dev}"
if ! command -v "$PY" >/dev/null 2>&1; then PY=python3; fi
hash="$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)"
stamp="$VENV/.installed-$hash-$EXTRAS"
if [ ! -f "$stamp" ] && [ "$EXTRAS" = dev ] && [ -f "$VENV/.installed-$hash-dev,bench" ]; then
  stamp="$VENV/.installed-$hash-dev,bench"
fi
if [ ! -f "$stamp" ]; then
  echo "[setup] creating $VENV and installing slorouter[$EXTRAS] (first run only)..." >&2
  "$PY" -m venv "$VENV"
  log="$VENV/install.log"
  if ! { "$VENV/bin/python" -m pip install --upgrade pip && "$VENV/bin/python" -m pip install -e "$ROOT[$EXTRAS]"; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "[setup] installing failed (full log: $log)" >&2
    exit 1
  fi
  rm -f "$VENV"/.installed-* && touch "$stamp"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
cd "$ROOT"
