"""Dice and time per iteration of every registered architecture, at equal iterations, on one fold.

Usage (from the repository root)::

    python benchmarks/arch_table.py [--dataset ../shared/data/Dataset004_Hippocampus] [--workdir /tmp/arch_table] \
        [--archs unet,resenc_unet,...] [--epochs 20] [--iters-per-epoch 250] [--device cuda] [--fold 0]

For each architecture (default: every entry of ``autoseg.models.registry.ARCHITECTURES``) it plans the
dataset with the architecture's own preset (``autoseg plan DATASET --planner <preset>``; planned once per
preset, fingerprint shared), trains ``--fold`` for ``--epochs`` x ``--iters-per-epoch`` iterations
(``autoseg train --arch A --plans <preset>``), and reads

- Dice: ``foreground_mean`` of the end-of-training validation (``validation/summary.json``: full
  volumes of the fold's validation cases, mirroring TTA), and the per-class means;
- time per iteration: median over epochs of ``epoch_time / iters_per_epoch`` from ``log.jsonl``
  (the first epoch, which includes start-up and compilation, is left out when there are several);
  with ``--time-steps N``, also the network's own step time measured here afterwards
  (:func:`step_seconds`), which does not depend on what ran beside the training;
- the patch, batch and parameter count of the trained network.

It prints a Markdown table and the commands it ran. An architecture whose run folder already holds
``checkpoint_final.pt`` is not trained again (its figures are read), so a rerun with the same options
completes an interrupted table. Nothing here is timed by tests; run it on a GPU (``--device cuda``) or
an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = REPO.parent / "shared" / "data" / "Dataset004_Hippocampus"


def run(cmd: list[str], log: list[str]) -> None:
    log.append(" ".join(cmd))
    subprocess.run(cmd, check=True, cwd=REPO)


def autoseg(*args: str) -> list[str]:
    return [sys.executable, "-m", "autoseg", *args]


def figures(run_dir: Path) -> dict:
    import torch

    from autoseg.core.checkpoint import FINAL, ModelRecord, load_checkpoint
    from autoseg.models import build_model
    from autoseg.planning.plans import Plans

    record = ModelRecord.of(load_checkpoint(run_dir / FINAL), run_dir / FINAL)
    plans = Plans.from_dict(record.plans)
    config = plans.configuration(record.configuration)
    labels = len(record.dataset.labels)
    try:  # counting parameters needs no weights
        with torch.device("meta"):
            net = build_model(record.arch, config, len(record.dataset.channel_names), labels)
    except (RuntimeError, NotImplementedError):  # SwinUNETR reads a tensor's value while it is built
        net = build_model(record.arch, config, len(record.dataset.channel_names), labels)
    history = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    iters = record.settings["iters_per_epoch"]
    times = [h["epoch_time"] / iters for h in (history[1:] if len(history) > 1 else history)]
    summary = json.loads((run_dir / "validation" / "summary.json").read_text())
    return {"dice": summary["foreground_mean"], "per_class": summary["mean"], "s_per_iter": statistics.median(times),
            "patch": config.patch_size, "batch": config.batch_size,
            "params": sum(p.numel() for p in net.parameters())}


def step_seconds(run_dir: Path, steps: int, warmup: int = 2) -> float:
    """Median seconds of one training step of the run's network (forward, backward, optimiser step,
    under the run's precision and optimiser) on random data of its patch and batch size: the network's
    own cost, without data loading or the validation, measured in this process (so on an idle machine
    it does not depend on what else ran while the table was trained)."""
    import time

    import torch

    from autoseg.core.checkpoint import FINAL, ModelRecord, load_checkpoint
    from autoseg.core.runtime import autocast, guard_tiny_convolutions, resolve_amp, resolve_device
    from autoseg.models import build_model
    from autoseg.planning.plans import Plans
    from autoseg.training.trainer import TrainSettings, make_optimizer

    record = ModelRecord.of(load_checkpoint(run_dir / FINAL), run_dir / FINAL)
    config = Plans.from_dict(record.plans).configuration(record.configuration)
    settings = TrainSettings.from_dict(record.settings)
    device = resolve_device(settings.device)
    amp_dtype, _ = resolve_amp(settings.amp, device)
    classes = len(record.dataset.labels)
    net = build_model(record.arch, config, len(record.dataset.channel_names), classes).to(device)
    if device.type == "cpu" and amp_dtype is not None:
        guard_tiny_convolutions(net)
    optimizer = make_optimizer(net, settings)
    batch = settings.batch_size or config.batch_size
    x = torch.randn(batch, len(record.dataset.channel_names), *config.patch_size, device=device)
    y = torch.randint(0, classes, (batch, *config.patch_size), device=device)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        with autocast(device, amp_dtype):
            out = net(x)
            out = out[0] if isinstance(out, (list, tuple)) else out
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def set_batch_size(workdir: Path, dataset: str, preset: str, batch: int, config: str, log: list[str]) -> None:
    """Overwrite the batch size of one configuration of a preset's plans (a benchmark setting, not a
    planning rule)."""
    from autoseg.planning.plans import Plans, plans_name_for
    from autoseg.workspace import Workspace

    path = Workspace(workdir).plans_file(dataset, plans_name_for(preset))
    plans = Plans.load(path)
    data = plans.to_dict()
    planned = data["configurations"][config]["batch_size"]
    data["configurations"][config]["batch_size"] = batch
    Plans.from_dict(data).save(path)
    log.append(f"# {path.name}: {config} batch size {planned} -> {batch} (--batch-size)")


def main(argv=None) -> int:
    from autoseg.models import ARCHITECTURES
    from autoseg.planning.plans import plans_name_for

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/arch_table"))
    ap.add_argument("--archs", default=",".join(ARCHITECTURES))
    ap.add_argument("--fold", default="0")
    ap.add_argument("--config", default="3d_fullres", help="configuration trained (default 3d_fullres; 2d is the "
                    "cheap one for a CPU)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--iters-per-epoch", type=int, default=250)
    ap.add_argument("--val-iters", type=int, default=50)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--time-steps", type=int, default=0, metavar="N",
                    help="also time N training steps of each trained network in this process on random data "
                         "(column 'network s / step'; run it when nothing else runs)")
    ap.add_argument("--no-val-tta", action="store_true", help="final validation without mirroring (train "
                    "--no-val-tta): about 8x less validation time, for a CPU table")
    ap.add_argument("-j", "--workers", type=int, default=4, help="planning workers")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="train every architecture at this batch size (the planned 3d_fullres batch sizes differ "
                         "by preset; equal batches make a CPU table comparable): written into each preset's "
                         "plans file after planning, and said so in the output")
    args = ap.parse_args(argv)
    archs = [a for a in args.archs.split(",") if a]
    unknown = [a for a in archs if a not in ARCHITECTURES]
    if unknown:
        raise SystemExit(f"unknown architecture(s) {', '.join(unknown)}; choices: {', '.join(ARCHITECTURES)}")
    if not (args.dataset / "dataset.json").is_file():
        raise SystemExit(f"{args.dataset}: no dataset.json; give a raw dataset folder with --dataset")
    work = ["--workdir", str(args.workdir)]
    commands, rows = [], []
    planned = set()
    for name in archs:
        preset = ARCHITECTURES[name].preset
        plans_file = args.workdir / "preprocessed" / args.dataset.name / f"plans_{preset}.json"
        if preset == "default":
            plans_file = plans_file.with_name("plans.json")
        if preset not in planned:
            if plans_file.is_file():  # planned by an earlier run of this script
                commands.append(f"# {plans_file.name}: planned by an earlier run")
            else:
                run(autoseg("plan", str(args.dataset), "--planner", preset, "-j", str(args.workers), "--no-progress",
                            *work), commands)
            planned.add(preset)
            if args.batch_size:
                set_batch_size(args.workdir, args.dataset.name, preset, args.batch_size, args.config, commands)
        run_dir = (args.workdir / "results" / args.dataset.name / f"{name}__{plans_name_for(preset)}__{args.config}"
                   / f"fold_{args.fold}")
        train = autoseg("train", args.dataset.name, "--fold", args.fold, "--arch", name, "--plans", preset,
                        "--config", args.config,
                        "--epochs", str(args.epochs), "--iters-per-epoch", str(args.iters_per_epoch),
                        "--val-iters", str(args.val_iters), "--device", args.device, "--no-progress",
                        *(["--no-val-tta"] if args.no_val_tta else []), *work)
        if (run_dir / "checkpoint_final.pt").is_file():  # a rerun completes the table: finished rows are read
            commands.append(" ".join(train) + "   # trained by an earlier run of this script")
        else:
            run(train, commands)
        f = figures(run_dir)
        rows.append([name, preset, "×".join(map(str, f["patch"])), str(f["batch"]), f"{f['params'] / 1e6:.1f} M",
                     f"{f['dice']:.4f}", ", ".join(f"{k} {v:.4f}" for k, v in f["per_class"].items()),
                     f"{f['s_per_iter']:.3f}", *([f"{step_seconds(run_dir, args.time_steps):.3f}"]
                                                   if args.time_steps else [])])
    header = ["--arch", "preset", "patch", "batch", "parameters", "Dice (fg mean)", "Dice per class",
              "s / iteration (training log)", *(["network s / step"] if args.time_steps else [])]
    print(f"{args.dataset.name}, {args.config}, fold {args.fold}, {args.epochs} x {args.iters_per_epoch} iterations, "
          f"device {args.device}" + (f", batch size {args.batch_size} for all" if args.batch_size else "")
          + (", validation without mirroring" if args.no_val_tta else ", validation with mirroring") + "\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print("\n```bash\n" + "\n".join(commands) + "\n```")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
