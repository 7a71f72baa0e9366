#!/usr/bin/env bash
# autoseg on a CUDA machine: the checks a CPU-only machine (and CI) cannot run, each printing its
# figures. Run from anywhere; autoseg is imported from this checkout.
#   bash benchmarks/gpu_check.sh [HIPPOCAMPUS_RAW_DIR]
# 1. environment; 2. the toy dataset on CUDA: plan, train (AMP, checkpoint scaler state), resume,
# torch.compile, Swin UNETR, torchrun; 3. NCCL + DistributedDataParallel around the deep-supervision
# U-Net (no unused-parameter error); 4. predict on CUDA vs CPU (label agreement, time);
# 5. with a Hippocampus raw folder (nnU-Net layout): plan, train fold 0 for HIPPO_EPOCHS x
# HIPPO_ITERS iterations, print epoch time, data-wait fraction and the fold's validation Dice, and
# save the first seed's weights as float16 files of at most ~14 MB in OUT (to take the model home).
# Environment: PYTHON (default python3), OUT (logs, default ./gpu_check_out), WORK (default /tmp/autoseg_gpu), DEVICE (cuda),
# HIPPO_EPOCHS (10), HIPPO_ITERS (250), HIPPO_SEEDS (seeds run one after another, default "1"),
# SKIP_STEPS (names of steps to skip, space-separated).
# Every step has its own time limit; a failed step is reported and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-$PWD/gpu_check_out}"; WORK="${WORK:-/tmp/autoseg_gpu}"; DEVICE="${DEVICE:-cuda}"
HIPPO="${1:-}"; HIPPO_EPOCHS="${HIPPO_EPOCHS:-10}"; HIPPO_ITERS="${HIPPO_ITERS:-250}"; HIPPO_SEEDS="${HIPPO_SEEDS:-1}"
TOY=Dataset999_ToyCT
mkdir -p "$OUT" "$WORK"
LOG="$OUT/gpu_check.log"; : > "$LOG"
failures=0

step() {  # step NAME LIMIT_S command...: run with a time limit, log, print PASS/FAIL and the last lines
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS rc
  case " ${SKIP_STEPS:-} " in *" $name "*) echo "[SKIP] $name"; return 0;; esac
  echo "=== $name" >> "$LOG"
  timeout "$limit" "$@" >> "$LOG.step" 2>&1; rc=$?
  cat "$LOG.step" >> "$LOG"
  if [ $rc -eq 0 ]; then echo "[PASS] $name ($((SECONDS - t0)) s)"; else echo "[FAIL rc=$rc] $name ($((SECONDS - t0)) s)"; failures=$((failures + 1)); fi
  grep -E "^(RESULT|figure)" "$LOG.step" | sed 's/^/    /'
  [ $rc -eq 0 ] || tail -n 8 "$LOG.step" | sed 's/^/    | /'
  rm -f "$LOG.step"
}
PY="${PYTHON:-python3}"
AS=("$PY" -m autoseg --workdir "$WORK")  # this checkout's autoseg on the work folder
TOY_ITERS="${TOY_ITERS:-20}"

step environment 60 "$PY" - "$DEVICE" <<'EOF'
import sys, torch
dev = sys.argv[1]
print(f"RESULT torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
if dev == "cuda":
    assert torch.cuda.is_available(), "CUDA not available"
    p = torch.cuda.get_device_properties(0)
    print(f"RESULT {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}, "
          f"NCCL {torch.cuda.nccl.version()}")
EOF

toy_basics() {  # plan, train with AMP, resume, checkpoint contents
run=$WORK/results/$TOY/unet__autosegPlans__3d_fullres
step toy-data 120 "${AS[@]}" demo-data --cases 10 --test-cases 2 --seed 0
step toy-plan 300 "${AS[@]}" plan $TOY --no-progress
step toy-train-amp 240 "${AS[@]}" train $TOY --fold 0 --epochs 2 --iters-per-epoch $TOY_ITERS --val-iters 3 --device "$DEVICE" --no-progress
step toy-resume 180 "${AS[@]}" train $TOY --fold 0 --epochs 3 --iters-per-epoch $TOY_ITERS --val-iters 3 --device "$DEVICE" --resume --no-progress
step toy-checkpoint 60 "$PY" - "$run/fold_0" "$DEVICE" "$TOY_ITERS" <<'EOF'
import json, sys
from pathlib import Path
import torch
run, dev = Path(sys.argv[1]), sys.argv[2]
ck = torch.load(run / "checkpoint_final.pt", map_location="cpu", weights_only=True)
epochs = [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()]
assert epochs == [0, 1, 2], f"log.jsonl epochs {epochs}: resume should add epoch 2 only"
scaler = ck.get("scaler") or {}
print(f"RESULT checkpoint epoch {ck['train_state'].get('epoch')}, AMP scaler state {'present' if scaler else 'absent'} "
      f"(scale {scaler.get('scale', 'n/a')}), settings amp={ck['settings'].get('amp')}")
if dev == "cuda":
    assert scaler, "fp16 AMP on CUDA should save the GradScaler state"
summary = json.loads((run / "validation" / "summary.json").read_text())
print(f"RESULT toy fold 0 validation Dice {summary['mean']} (3 epochs x {sys.argv[3]} iterations)")
EOF
}

toy_predict() {  # predict on the device and on the CPU, compare, evaluate
pred=$WORK/predictions
step predict-$DEVICE 300 "${AS[@]}" predict -d $TOY -i "$WORK/raw/$TOY/imagesTs" -o "$pred/$DEVICE" --folds 0 --device "$DEVICE" --overwrite --no-progress
step predict-cpu 600 "${AS[@]}" predict -d $TOY -i "$WORK/raw/$TOY/imagesTs" -o "$pred/cpu" --folds 0 --device cpu --backend torch --overwrite --no-progress
step predict-agreement 60 "$PY" - "$pred/$DEVICE" "$pred/cpu" <<'EOF'
import sys
from pathlib import Path
import nibabel as nib, numpy as np
a, b = Path(sys.argv[1]), Path(sys.argv[2])
for f in sorted(a.glob("*.nii.gz")):
    x, y = nib.load(f), nib.load(b / f.name)
    assert x.shape == y.shape and np.allclose(x.affine, y.affine), f"{f.name}: geometry differs"
    same = float((np.asarray(x.dataobj) == np.asarray(y.dataobj)).mean())
    print(f"RESULT {f.name}: labels of {a.name} and {b.name} agree on {100 * same:.3f}% of voxels")
EOF
step toy-evaluate 120 "${AS[@]}" evaluate -d $TOY "$WORK/raw/$TOY/labelsTs" "$pred/$DEVICE"
}

nccl_ddp() {
step nccl-ddp 120 "$PY" - "$WORK" "$DEVICE" <<'EOF'
# DistributedDataParallel (NCCL on CUDA) around the plan's deep-supervision U-Net: a few steps; an
# unused parameter would raise on the second one (find_unused_parameters stays off, as in training).
import os, sys
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from autoseg.models import build_model
from autoseg.planning.plans import Plans
work, dev = sys.argv[1], torch.device(sys.argv[2])
os.environ.setdefault("MASTER_ADDR", "127.0.0.1"); os.environ.setdefault("MASTER_PORT", "29555")
dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=0, world_size=1)
cfg = Plans.load(f"{work}/preprocessed/Dataset999_ToyCT/plans.json").configuration("3d_fullres")
net = build_model("unet", cfg, 1, 4, True).to(dev)
ddp = DistributedDataParallel(net, device_ids=[0] if dev.type == "cuda" else None)
opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
x = torch.randn(2, 1, *cfg.patch_size, device=dev)
for _ in range(3):
    outs = ddp(x)
    loss = sum(o.float().mean() for o in (outs if isinstance(outs, (list, tuple)) else [outs]))
    opt.zero_grad(); loss.backward(); opt.step()
print(f"RESULT DDP backend {dist.get_backend()}: 3 steps with {len(outs) if isinstance(outs, (list, tuple)) else 1} "
      "deep-supervision outputs, no unused-parameter error")
dist.destroy_process_group()
EOF
}

toy_extras() {  # torch.compile, Swin UNETR, torchrun
step toy-compile 240 "${AS[@]}" train $TOY --fold 1 --epochs 1 --iters-per-epoch $TOY_ITERS --val-iters 2 --device "$DEVICE" --compile --no-progress
step toy-swin-plan 120 "$PY" -m autoseg --workdir "$WORK/swin" plan "$WORK/raw/$TOY" --planner swin_unetr --no-progress
step toy-swin-unetr 180 "$PY" -m autoseg --workdir "$WORK/swin" train $TOY --fold 2 --arch swin_unetr --epochs 1 --iters-per-epoch $TOY_ITERS --val-iters 2 --device "$DEVICE" --no-progress
step toy-torchrun 180 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m autoseg --workdir "$WORK" train $TOY --fold 3 --epochs 1 --iters-per-epoch $TOY_ITERS --val-iters 2 --device "$DEVICE" --no-progress
}

hippo_seed() {  # train Hippocampus fold 0 with seed $1, report, keep the logs
  local seed=$1
  hw="$WORK/hippo_seed$seed"
  mkdir -p "$hw" && ln -sfn "$WORK/preprocessed" "$hw/preprocessed" && ln -sfn "$WORK/raw" "$hw/raw" 2>/dev/null
  step "hippocampus-train-seed$seed" 1800 "$PY" -m autoseg --workdir "$hw" train "$H" --fold 0 --epochs "$HIPPO_EPOCHS" \
    --iters-per-epoch "$HIPPO_ITERS" --device "$DEVICE" --seed "$seed" --no-progress
  step "hippocampus-report-seed$seed" 60 "$PY" - "$hw/results/$H/unet__autosegPlans__3d_fullres/fold_0" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
times = [e["epoch_time"] for e in log[1:]] or [log[0]["epoch_time"]]
print(f"RESULT {len(log)} epochs; epoch time median {sorted(times)[len(times) // 2]:.1f} s (first {log[0]['epoch_time']:.1f} s); "
    f"data-wait fraction median {sorted(e['data_wait_fraction'] for e in log)[len(log) // 2]:.3f}")
print("RESULT pseudo Dice per epoch: " + " ".join(f"{e['mean_pseudo_dice']:.3f}" for e in log))
s = json.loads((run / "validation" / "summary.json").read_text())
print(f"RESULT fold 0 validation ({s['n_cases']} cases, full volumes): Dice {s['mean']}, foreground mean {s['foreground_mean']:.4f}")
EOF
  cp "$hw/results/$H/unet__autosegPlans__3d_fullres/fold_0/progress.png" "$OUT/hippocampus_seed${seed}_progress.png" 2>/dev/null
  cp "$hw/results/$H/unet__autosegPlans__3d_fullres/fold_0/log.jsonl" "$OUT/hippocampus_seed${seed}_log.jsonl" 2>/dev/null
  # the first seed's trained fold 0 as small files (float16 weights, no optimiser state) to take home,
  # e.g. for benchmarks/predict_vs_nnunet.py on a CPU machine
  [ "$seed" = "${HIPPO_SEEDS%% *}" ] && step hippocampus-export 60 "$PY" - "$WORK/hippo_seed$seed/results/$H/unet__autosegPlans__3d_fullres/fold_0" "$OUT" <<'EOF'
import sys
from pathlib import Path
import torch
run, out = Path(sys.argv[1]), Path(sys.argv[2])
ck = torch.load(run / "checkpoint_final.pt", map_location="cpu", weights_only=True)
small = {k: v for k, v in ck.items() if k not in ("optimizer", "scaler", "scheduler", "rng")}
weights = {k: (v.half() if v.is_floating_point() else v) for k, v in ck["model"].items()}
parts, part, size = [], {}, 0  # files of at most ~14 MB each (the device tool brings back 16 MB per file)
for k, v in weights.items():
    if part and size + v.numel() * v.element_size() > 14e6:
        parts.append(part); part, size = {}, 0
    part[k] = v; size += v.numel() * v.element_size()
parts.append(part)
small["model"] = {}
torch.save(small, out / "hippocampus_fold0_meta.pt")
for i, part in enumerate(parts):
    torch.save(part, out / f"hippocampus_fold0_fp16_part{i}.pt")
print(f"RESULT exported {sum(v.numel() for v in weights.values()) / 1e6:.2f} M weights as float16 in {len(parts)} "
      f"files + hippocampus_fold0_meta.pt; checkpoint keys {sorted(ck)}")
EOF
}

toy_basics
toy_predict
nccl_ddp
if [ -n "$HIPPO" ]; then  # the first seed before the slower extras, the other seeds after them
  H=$(basename "$HIPPO")
  step hippocampus-plan 300 "${AS[@]}" plan "$HIPPO" --configs 3d_fullres --no-progress
  hippo_seed "${HIPPO_SEEDS%% *}"
fi
toy_extras
if [ -n "$HIPPO" ]; then
  for seed in ${HIPPO_SEEDS#* }; do [ "$seed" = "${HIPPO_SEEDS%% *}" ] || hippo_seed "$seed"; done
fi
echo "failed steps: $failures; full log: $LOG"
exit $((failures > 0))
