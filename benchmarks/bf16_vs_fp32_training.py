"""bf16 against fp32 training on CPU at equal iterations: validation Dice, and how soon each class
leaves the all-background state.

Usage (from the repository root; ``WS`` a workspace holding ``preprocessed/<dataset>``, from
``autoseg plan``)::

    python benchmarks/bf16_vs_fp32_training.py --planned WS [--dataset Dataset004_Hippocampus] [--fold 0]
        [--seeds 1 2 3] [--precisions bf16 fp32] [--epochs 5] [--iters-per-epoch 20] [--batch-size 7]
        [--threads 2] [--optimizer sgd|adamw] [--lr LR] [--out /tmp/bf16_vs_fp32]

Each (precision, seed) trains fold ``--fold`` in its own workspace under ``--out`` that links to the
planned data (``autoseg train --amp bf16|fp32 --seed S``; the planned batch size unless ``--batch-size``),
one run after the other, with a short per-epoch validation (5 batches) and a final validation of the
fold's cases without mirroring. Printed per run: pseudo Dice per class after each epoch, the first epoch
end at which each class's pseudo Dice exceeds 0.1 (in iterations), the final validation Dice per class
and the training seconds per iteration; then per precision the mean and range over seeds. Nothing here
is timed by tests; bf16 needs a CPU with native bf16 (AVX-512 BF16 or AMX) to be fast, it runs elsewhere
too (emulated, slowly).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

LEFT_BACKGROUND = 0.1  # pseudo Dice above which a class counts as found


def one_run(planned: Path, out: Path, dataset: str, fold: str, amp: str, seed: int, args) -> dict:
    from autoseg import api
    from autoseg.training.session import TrainRequest
    from autoseg.workspace import Workspace

    root = out / f"{amp}_{args.optimizer or 'recipe'}{args.lr or ''}_seed{seed}"
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "preprocessed").exists():
        (root / "preprocessed").symlink_to((planned / "preprocessed").resolve())
    settings = dict(amp=amp, seed=seed, epochs=args.epochs, iters_per_epoch=args.iters_per_epoch, val_iters=5,
                    val_mirroring=False, device="cpu")
    if args.batch_size:
        settings["batch_size"] = args.batch_size
    if args.optimizer:
        settings["optimizer"] = args.optimizer
    if args.lr is not None:
        settings["lr"] = args.lr
    t0 = time.time()
    run = api.train(Workspace(root), TrainRequest(dataset, folds=(fold,), settings=settings, resume=True),
                    progress=False)[0]
    history = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    summary = json.loads((run / "validation" / "summary.json").read_text())
    classes = list(summary["mean"])
    found = {}
    for c, name in enumerate(classes):
        hits = [(h["epoch"] + 1) * args.iters_per_epoch for h in history if h["pseudo_dice"][c] > LEFT_BACKGROUND]
        found[name] = hits[0] if hits else None
    steady = history[1:] or history
    return {"amp": amp, "seed": seed, "wall_s": time.time() - t0, "classes": classes,
            "pseudo": [[round(x, 3) for x in h["pseudo_dice"]] for h in history], "found_at": found,
            "dice": summary["mean"], "fg_mean": summary["foreground_mean"],
            "s_per_iter": statistics.median(h["epoch_time"] / args.iters_per_epoch for h in steady)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--planned", type=Path, required=True)
    ap.add_argument("--dataset", default="Dataset004_Hippocampus")
    ap.add_argument("--fold", default="0")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--iters-per-epoch", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--optimizer", choices=["sgd", "adamw"], default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bf16_vs_fp32"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:  # precisions alternate, so a change of machine load hits both alike
        for amp in args.precisions:
            r = one_run(args.planned, args.out, args.dataset, args.fold, amp, seed, args)
            rows.append(r)
            print(f"{amp} seed {seed}: {r['s_per_iter']:.2f} s/iteration; pseudo Dice per epoch {r['pseudo']}; "
                  f"first > {LEFT_BACKGROUND} at iteration {r['found_at']}; final Dice "
                  f"{ {k: round(v, 4) for k, v in r['dice'].items()} }, foreground mean {r['fg_mean']:.4f}",
                  flush=True)
    print(f"\n{args.dataset} fold {args.fold}, {args.epochs} x {args.iters_per_epoch} iterations, "
          f"batch {args.batch_size or 'as planned'}, optimiser {args.optimizer or 'recipe'} lr {args.lr or 'recipe'}, "
          f"{args.threads} threads, final validation without mirroring\n")
    classes = rows[0]["classes"]
    header = ["precision", "seeds", *(f"Dice {c} (mean, range)" for c in classes), "fg mean (mean, range)",
              *(f"{c} found at iteration (per seed)" for c in classes), "s / iteration (median)"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for amp in args.precisions:
        mine = [r for r in rows if r["amp"] == amp]

        def spread(values):
            return f"{statistics.mean(values):.4f} ({min(values):.4f}–{max(values):.4f})"

        cells = [amp, ", ".join(str(r["seed"]) for r in mine),
                 *(spread([r["dice"][c] for r in mine]) for c in classes), spread([r["fg_mean"] for r in mine]),
                 *(", ".join(str(r["found_at"][c] or f"> {args.epochs * args.iters_per_epoch}") for r in mine)
                   for c in classes),
                 f"{statistics.median(r['s_per_iter'] for r in mine):.2f}"]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
