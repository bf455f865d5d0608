#!/usr/bin/env bash
# Set up, generate the example scene, train a small model on it and predict buildings.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python examples/quickstart.py "$@"
