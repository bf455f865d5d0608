#!/usr/bin/env bash
# Create .venv (if missing) and install geounet with the CPU build of PyTorch first.
# GPU users: install your CUDA build of torch (>=2.2) into .venv first, or set GEOUNET_TORCH.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    # The CPU build; a plain "torch" would pull a multi-GB CUDA build.
    .venv/bin/python -m pip install -q "${GEOUNET_TORCH:-torch==2.13.0}"
fi
# Extras: dev (tests, linters) by default; scripts/test.sh adds docs (the MkDocs site).
.venv/bin/python -m pip install -q -e ".[${GEOUNET_EXTRAS:-dev}]"
