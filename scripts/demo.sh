#!/usr/bin/env bash
# autoseg end to end on a small synthetic CT dataset, on a CPU-only machine (Python >= 3.10).
#   bash scripts/demo.sh                 install, make the toy dataset, plan and preprocess it
#   SKIP_INSTALL=1 bash scripts/demo.sh  same without the pip installs
#   WORKDIR=/some/dir bash scripts/demo.sh
# Every step skips work that is already done, so the script can be rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR="${WORKDIR:-$PWD/autoseg_work}"
DATASET=Dataset999_ToyCT
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  python -m pip install torch==2.13.0      # GPU machines: install torch for your CUDA first (README)
  python -m pip install -e .
fi

step() { echo; echo "==> $*"; }

step "toy dataset"
if [ ! -f "$WORKDIR/raw/$DATASET/dataset.json" ]; then
  autoseg --workdir "$WORKDIR" demo-data --cases 8 --seed 0
else
  echo "$WORKDIR/raw/$DATASET exists"
fi

step "integrity check, fingerprint, plans, preprocessing, splits"
autoseg --workdir "$WORKDIR" plan "$DATASET"

echo
echo "done; everything is under $WORKDIR (raw/, preprocessed/$DATASET/)"
