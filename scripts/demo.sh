#!/usr/bin/env bash
# autoseg end to end on a small synthetic CT dataset, on a CPU-only machine (Python >= 3.10).
#   bash scripts/demo.sh                 install, make the toy dataset, then plan, train (BUDGET,
#                                        default 3m, on CPU), predict, evaluate and draw a preview PNG
#   SKIP_INSTALL=1 bash scripts/demo.sh  same without the pip installs
#   WORKDIR=/some/dir bash scripts/demo.sh
#   BUDGET=10m bash scripts/demo.sh      train longer (any --time-budget value: 90s, 10m, 1h)
# Every step skips work that is already done, so the script can be rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR="${WORKDIR:-$PWD/autoseg_work}"
DATASET=Dataset999_ToyCT
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install torch==2.13.0    # GPU machines: install torch for your CUDA first (README)
  else  # no GPU: the CPU-only build (PyPI's Linux wheel brings the CUDA libraries, several GB)
    python -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
  fi
  python -m pip install -e .
fi

step() { echo; echo "==> $*"; }

step "toy dataset"
if [ ! -f "$WORKDIR/raw/$DATASET/dataset.json" ]; then
  autoseg --workdir "$WORKDIR" demo-data --cases 8 --test-cases 2 --seed 0
else
  echo "$WORKDIR/raw/$DATASET exists"
fi

step "integrity check, fingerprint, plans, preprocessing, splits"
autoseg --workdir "$WORKDIR" plan "$DATASET"

# A deliberately short run so the demo finishes in minutes on a CPU: training and its final
# validation are fitted to BUDGET (the run times its first epochs and sets the number of epochs and
# the learning-rate schedule from it; a schedule this short trains with AdamW, see docs/commands.md);
# the final validation of fold 0 skips mirroring so a slow CPU keeps more of the budget for training
# (the held-out cases below are still predicted with mirroring). Real runs use the defaults (1000 epochs x 250
# iterations) on a GPU.
BUDGET="${BUDGET:-5m}"
ITERS="${ITERS:-10}"  # short epochs: a slow CPU still fits its first epoch and the final validation
step "train fold 0 (time budget $BUDGET, epochs of $ITERS iterations)"
run_dir="$WORKDIR/results/$DATASET/unet__autosegPlans__3d_fullres/fold_0"
if [ -f "$run_dir/checkpoint_final.pt" ]; then
  echo "$run_dir is already trained"
else
  resume=""; [ -f "$run_dir/checkpoint_latest.pt" ] && resume="--resume"
  autoseg --workdir "$WORKDIR" train "$DATASET" --fold 0 --time-budget "$BUDGET" --iters-per-epoch "$ITERS" \
    --val-iters 2 --no-val-tta --device cpu $resume
fi

step "predict the held-out cases (imagesTs)"
autoseg --workdir "$WORKDIR" predict -d "$DATASET" -i "$WORKDIR/raw/$DATASET/imagesTs" \
  -o "$WORKDIR/predictions/$DATASET" --folds 0 --device cpu

step "evaluate against labelsTs"
autoseg --workdir "$WORKDIR" evaluate -d "$DATASET" "$WORKDIR/raw/$DATASET/labelsTs" \
  "$WORKDIR/predictions/$DATASET"

step "preview"
first=$(ls "$WORKDIR/raw/$DATASET/imagesTs" | head -n 1)
case_id="${first%_0000.nii.gz}"
autoseg --workdir "$WORKDIR" show -d "$DATASET" "$WORKDIR/raw/$DATASET/imagesTs/$first" \
  "$WORKDIR/predictions/$DATASET/$case_id.nii.gz" -o "$WORKDIR/predictions/$DATASET/preview_$case_id.png"

echo
echo "done; everything is under $WORKDIR (raw/, preprocessed/, results/, predictions/)"
