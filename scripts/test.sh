#!/usr/bin/env bash
# The one test command: sets up the environment, then lint, types, layers, tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k proxy).
source "$(dirname "$0")/_env.sh"
echo "== ruff" && ruff check slorouter loadgen slojudge tests scripts
echo "== mypy (strict)" && mypy
echo "== import-linter (layers)" && lint-imports
echo "== pytest" && python -m pytest "$@"
