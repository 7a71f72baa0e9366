#!/usr/bin/env bash
# autoseg beside nnU-Net v2 on one GPU (issue 17 point 3): training iterations per second at the same
# plan and batch, GPU utilisation, autoseg's data-wait, and Dice at equal wall time on
# Dataset004_Hippocampus fold 0. The GPU machine has PyTorch but no package index, so what the two
# tools need beyond its image travels as wheel files, in two parts (one call may carry 64 MiB).
#
#   here (any x86-64 machine with pip access), from the repository root:
#     bash benchmarks/gpu_vs_nnunet.sh prepare [RAW_DATASET_DIR]
#       wheels for Python 3.12 into .whl_sitk/ (SimpleITK, ~53 MB) and .whl/ (nnunetv2 2.8.1 and its
#       pure-Python and small binary needs, MONAI, nibabel: ~20 MB), the raw dataset into .gpudata/
#       (16 MB for Hippocampus); all three are added to .git/info/exclude. Prints the device calls.
#   on the GPU machine, from the repository root (device tool calls; each names its carry):
#     bash benchmarks/gpu_vs_nnunet.sh install   carry .whl_sitk          (SimpleITK into /tmp/site)
#     bash benchmarks/gpu_vs_nnunet.sh run       carry .whl .gpudata      (the rest, then the steps)
#   `run` reinstalls .whl each call (seconds) and says when SimpleITK is missing (machine given back
#   between the calls: run `install` again). Steps (env STEPS, default "preprocess throughput budget"):
#     preprocess  nnUNetv2_plan_and_preprocess -c 3d_fullres (nnU-Net's plans and data) and autoseg plan
#     throughput  ROUNDS interleaved bursts per tool (WARMUP steps, then ITERS timed; torch.compile on)
#     budget      each trains BUDGET_MIN minutes, one after the other (one GPU), then its final validation;
#                 SEEDS autoseg seeds (nnU-Net is not seeded); AUTOSEG_BUDGET=own uses autoseg's
#                 --time-budget, time-poly (default) the rule both share
#     archs       benchmarks/arch_table.py on CUDA: every --arch on fold 0 for ARCH_EPOCHS x 250 iterations
#                 (default 4), its preset's plan and batch; Dice and time per iteration (autoseg only)
#   A 15-minute device allowance fits: install + run with STEPS="preprocess throughput" (ROUNDS=1), then
#   run with STEPS=budget BUDGET_MIN=2. Figures go to $OUT (or ./gpu_vs_nnunet_out): report.md, JSON, logs.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-}"; RAW="${2:-../shared/data/Dataset004_Hippocampus}"
PY="${PYTHON:-python3}"
SITE=/tmp/site
OUTDIR="${OUT:-$PWD/gpu_vs_nnunet_out}"
WORK="${WORK:-/tmp/gpu_vs_nnunet}"

# name==version for Python 3.12 on x86-64; binary wheels where they exist, else built here from the sdist
WHEELS=(nnunetv2==2.8.1 acvl-utils==0.2.6 batchgenerators==0.25.5 batchgeneratorsv2==0.3.6 blosc2==4.15.0
        ndindex==1.10.1 numexpr==2.14.2 connected-components-3d==4.1.1 dynamic-network-architectures==0.4.4
        graphviz==0.21 yacs==0.1.8 fft-conv-pytorch==1.2.0 pydantic==2.14.4
        pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 monai==1.6.1 nibabel==5.4.2)
PLATFORMS=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
           --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

fetch() {  # fetch DIR NAME==VERSION: a binary wheel for the GPU image, or a wheel built from a pure-Python sdist
  python3 -m pip download -q --no-deps --only-binary=:all: "${PLATFORMS[@]}" -d "$1" "$2" 2>/dev/null ||
    python3 -m pip wheel -q --no-deps -w "$1" "$2" ||
    { echo "error: no wheel for $2" >&2; return 1; }
}

install_wheels() {  # install_wheels DIR: into $SITE, no index, no dependency resolution
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$1"/*.whl
}

case "$MODE" in
prepare)
  [ -f "$RAW/dataset.json" ] || { echo "error: $RAW has no dataset.json (give the raw dataset folder)" >&2; exit 2; }
  mkdir -p .whl .whl_sitk .gpudata
  for d in /.whl/ /.whl_sitk/ /.gpudata/; do grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
  fetch .whl_sitk SimpleITK==2.5.7 || exit 1
  for w in "${WHEELS[@]}"; do fetch .whl "$w" || exit 1; done
  rm -rf ".gpudata/$(basename "$RAW")" && cp -r "$RAW" .gpudata/
  du -sh .whl .whl_sitk .gpudata
  echo "device calls: run(command='bash benchmarks/gpu_vs_nnunet.sh install', carry=['.whl_sitk']), then"
  echo "  run(command='STEPS=\"preprocess throughput\" ROUNDS=1 bash benchmarks/gpu_vs_nnunet.sh run', carry=['.whl', '.gpudata'])"
  ;;
install)
  [ -d .whl_sitk ] || { echo "error: no .whl_sitk here: run 'prepare' first and carry .whl_sitk" >&2; exit 2; }
  install_wheels .whl_sitk && echo "SimpleITK installed into $SITE"
  ;;
run)
  [ -d .whl ] && [ -d .gpudata ] || { echo "error: carry .whl and .gpudata (made by 'prepare')" >&2; exit 2; }
  install_wheels .whl || exit 1
  export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  "$PY" -c "import SimpleITK" 2>/dev/null || { echo "error: SimpleITK missing in $SITE (the machine was given back since 'install'): run 'install' again, then 'run'" >&2; exit 2; }
  DATASET=$(ls .gpudata | grep '^Dataset' | head -n 1); ID=$((10#${DATASET:7:3}))
  mkdir -p "$OUTDIR" "$WORK"
  # nnU-Net's console scripts went to $SITE/bin; a folder that looks like a virtual environment for
  # train_vs_nnunet.py (its bin/python finds nnunetv2 through PYTHONPATH)
  VENV="$WORK/nnunet_env"; mkdir -p "$VENV/bin"
  ln -sf "$(command -v "$PY")" "$VENV/bin/python"
  for s in "$SITE"/bin/nnUNetv2_*; do ln -sf "$s" "$VENV/bin/$(basename "$s")"; done
  export nnUNet_raw="$PWD/.gpudata" nnUNet_preprocessed="$WORK/nnunet_ref" nnUNet_results="$WORK/nnunet_results"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUTDIR/gpu.txt"
  "$PY" -c "import torch, nnunetv2, monai; print('torch', torch.__version__, 'monai', monai.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUTDIR/gpu.txt"
  COMMON=(--dataset "$PWD/.gpudata/$DATASET" --fold 0 --device cuda --compile --threads "${THREADS:-4}"
          --workers "${WORKERS:-8}" --nnunet-venv "$VENV" --nnunet-preprocessed "$WORK/nnunet_ref"
          --workdir "$WORK/bench")
  for step in ${STEPS:-preprocess throughput budget}; do
    echo "=== $step ($(date -u +%H:%M:%S))"
    case "$step" in
    preprocess)
      "$VENV/bin/nnUNetv2_plan_and_preprocess" -d "$ID" -c 3d_fullres -np 8 > "$OUTDIR/nnunet_preprocess.log" 2>&1 ||
        { tail -20 "$OUTDIR/nnunet_preprocess.log"; exit 1; } ;;
    throughput)
      "$PY" benchmarks/train_vs_nnunet.py "${COMMON[@]}" --skip-budget --rounds "${ROUNDS:-2}" \
        --warmup "${WARMUP:-20}" --iters "${ITERS:-100}" --json "$OUTDIR/throughput.json" 2>&1 | tee "$OUTDIR/throughput.md" ;;
    budget)
      for seed in ${SEEDS:-12345}; do
        "$PY" benchmarks/train_vs_nnunet.py "${COMMON[@]}" --skip-throughput --budget-mode sequential \
          --budget-minutes "${BUDGET_MIN:-2}" --iters-per-epoch "${EPOCH_ITERS:-250}" --val-iters "${VAL_ITERS:-50}" \
          --autoseg-budget "${AUTOSEG_BUDGET:-time-poly}" --seed "$seed" \
          --json "$OUTDIR/budget_${BUDGET_MIN:-2}m_seed$seed.json" 2>&1 | tee "$OUTDIR/budget_${BUDGET_MIN:-2}m_seed$seed.md"
      done ;;
    archs)
      "$PY" benchmarks/arch_table.py --dataset "$PWD/.gpudata/$DATASET" --workdir "$WORK/archs" --device cuda \
        --epochs "${ARCH_EPOCHS:-4}" --iters-per-epoch 250 --val-iters 50 -j 8 2>&1 | tee "$OUTDIR/archs.md" ;;
    *) echo "error: unknown step '$step' (preprocess, throughput, budget, archs)" >&2; exit 2 ;;
    esac
  done
  cp "$WORK"/bench/*.log "$OUTDIR"/ 2>/dev/null || true
  ;;
*)
  sed -n '2,27p' "$0"; exit 2 ;;
esac
