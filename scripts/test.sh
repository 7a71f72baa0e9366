#!/usr/bin/env bash
# Install autoseg with its test extras (CPU torch) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install torch==2.13.0
python -m pip install -e '.[test]'
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" python -m pytest -q "$@"
