"""autoseg alone at the CPU equal-time setting of benchmarks/train_vs_nnunet.py, for one seed.

Fold 0 of a planned dataset, batch 2, 6 epochs x 25 iterations (the 150 iterations each tool made in
the 20-minute run), 1 thread, 1 augmentation worker, validation without mirroring; prints the train
loss per epoch and the fold's final validation Dice. Run several seeds side by side to see the
seed-to-seed spread at this early stage:

    for s in 1 2; do OMP_NUM_THREADS=1 python benchmarks/train_seeds.py --planned WS --seed $s & done; wait

``WS`` is a workspace holding ``preprocessed/Dataset004_Hippocampus`` (``autoseg plan``); each seed
trains in its own workspace under ``--out`` that links to it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--planned", type=Path, required=True, help="workspace with the planned dataset")
    ap.add_argument("--dataset", default="Dataset004_Hippocampus")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", type=Path, default=Path("/tmp/train_seeds"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from autoseg import api
    from autoseg.training.session import TrainRequest
    from autoseg.workspace import Workspace

    root = args.out / f"seed{args.seed}"
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "preprocessed").exists():
        (root / "preprocessed").symlink_to((args.planned / "preprocessed").resolve())
    t0 = time.time()
    settings = dict(batch_size=2, epochs=6, iters_per_epoch=25, val_iters=2, val_mirroring=False, seed=args.seed,
                    device="cpu", num_workers=1)
    run = api.train(Workspace(root), TrainRequest(args.dataset, settings=settings), progress=False)[0]
    summary = json.loads((run / "validation" / "summary.json").read_text())
    losses = [round(json.loads(line)["train_loss"], 3) for line in (run / "log.jsonl").read_text().splitlines()]
    print(f"seed {args.seed}: {time.time() - t0:.0f} s; train loss per epoch {losses}; final validation Dice "
          f"{summary['mean']}, foreground mean {summary['foreground_mean']:.3f}")


if __name__ == "__main__":
    main()
