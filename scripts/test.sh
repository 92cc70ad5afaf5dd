#!/usr/bin/env bash
# The one test command: sets up the environment, then lint, types, layers, tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k proxy).
source "$(dirname "$0")/_env.sh"
# the replica tests need a real redis-server: install it when missing (they skip, or fail
# under CI=1, when it cannot be had)
"$ROOT/scripts/ensure_redis.sh" || echo "[setup] no redis-server: the tests that need one skip (fail under CI=1)" >&2
echo "== ruff" && ruff check slorouter loadgen slojudge benchmarks tests scripts
echo "== mypy (strict)" && mypy
echo "== import-linter (layers)" && lint-imports
echo "== pytest" && python -m pytest "$@"
