#!/usr/bin/env bash
# Set up and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
GEOUNET_EXTRAS=dev,docs bash scripts/setup.sh
# Lint, format, types and the documentation site first (cheap), then the tests.
.venv/bin/ruff check geounet tests benchmarks scripts examples
.venv/bin/ruff format --check geounet tests benchmarks scripts examples
.venv/bin/mypy geounet
site=$(mktemp -d)
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$site"
rm -rf "$site"
exec .venv/bin/python -m pytest -q "$@"
