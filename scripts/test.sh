#!/usr/bin/env bash
# Set up and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Lint, format and types first (cheap), then the tests.
.venv/bin/ruff check geounet tests benchmarks scripts examples
.venv/bin/ruff format --check geounet tests benchmarks scripts examples
.venv/bin/mypy geounet
exec .venv/bin/python -m pytest -q "$@"
