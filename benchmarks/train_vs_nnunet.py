"""Training benchmark: autoseg vs nnU-Net v2 on the same data, fold, patch, batch and network.

Usage (from the repository root; nnU-Net v2 in its own virtual environment, its plans and
preprocessed data for the dataset already made by ``nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres``)::

    python benchmarks/train_vs_nnunet.py [--dataset ../shared/data/Dataset004_Hippocampus] [--fold 0]
        [--batch 2] [--threads 1] [--workers 1] [--budget-minutes 20] [--budget-mode parallel]
        [--rounds 3] [--warmup 2] [--iters 8] [--nnunet-venv /work/nnunet_venv]
        [--nnunet-preprocessed /tmp/nnunet_ref/preprocessed] [--workdir /tmp/train_vs_nnunet]

One run does:

1. Setup. ``autoseg plan`` of the dataset into ``WORKDIR/autoseg`` (rerun: skipped); a private
   nnU-Net preprocessed folder ``WORKDIR/nnunet/preprocessed/<Dataset>`` of links to nnU-Net's plans
   and data plus a ``splits_final.json`` written from autoseg's ``splits.json``, so every fold holds
   the same cases for both; checks that both plans agree on patch, strides, kernels and features;
   copies ``benchmarks/nnunet_trainer_budget.py`` into nnU-Net's package as ``nnUNetTrainer_Budget``
   (its settings come from ``NNUNET_BUDGET_*`` variables, see that file).
2. Throughput: ``--rounds`` interleaved short bursts (autoseg, nnU-Net, nnU-Net, autoseg, ...), each a
   fresh process training one epoch of ``--warmup`` + ``--iters`` steps with no validation. Measured
   over the window from the end of the last warm-up step to the end of the last step (data loading and
   augmentation included, validation and start-up excluded): the primary figure, **CPU seconds per
   iteration** = user + system CPU time of the trainer's whole process tree (augmentation workers
   included; read from ``/proc`` after every step, ``proctree.tree_cpu_seconds``) / ``--iters``, which
   other jobs on a shared machine barely change; and wall-clock iterations/s, which they do.
3. Accuracy at equal time: each trains for ``--budget-minutes`` of wall-clock time (both at once with
   ``--budget-mode parallel``, so both see the same machine load; or one after the other), with
   nnU-Net's poly learning-rate decay taken over time instead of epochs (``1e-2 (1 - t/T)^0.9`` at each
   epoch start) and a stop after the epoch whose end lies closest to T; then each runs its own final
   full-volume validation of the fold (sliding window, mirroring). Reported: each tool's own
   ``validation/summary.json`` foreground-mean Dice, and the Dice of both prediction folders scored by
   this script against the raw labels (one evaluator for both).

Both sides: ``--threads`` torch/OMP threads (default 1), ``--workers`` augmentation processes (0: batches
built in the training process), the same batch size (the plans' unless ``--batch``), ``--device`` (cpu by
default). autoseg's precision is its default (``--amp auto``: fp16 autocast on CUDA, bf16 autocast on
CPUs with native bf16, else fp32); nnU-Net trains in fp32 on CPU and with fp16 autocast on CUDA.

On a GPU (``--device cuda``; ``benchmarks/gpu_vs_nnunet.sh`` sets up both tools there): ``--compile``
turns on torch.compile for both (nnU-Net's default on CUDA, ``nnUNet_compile``; autoseg's ``--compile``),
GPU utilisation and memory are sampled with ``nvidia-smi`` every 0.5 s during every burst and budget run,
and the budget runs report autoseg's data-wait fraction (share of step time spent waiting for batches,
from its ``log.jsonl``). ``--autoseg-budget own`` gives autoseg its own ``--time-budget`` (epochs fitted so
that training plus the final validation end within the budget) instead of the time-based poly rule that
both sides share by default; nnU-Net's budget always covers its training only, its validation comes after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

CONFIG = "3d_fullres"
HERE = Path(__file__).resolve().parent
TRAINER_SOURCE = HERE / "nnunet_trainer_budget.py"
TRAINER_NAME = "nnUNetTrainer_Budget"


class BenchError(RuntimeError):
    """The benchmark cannot run as set up (the message says what to fix)."""


# ---------------------------------------------------------------------------------------------- setup
def plan_autoseg(dataset: Path, workdir: Path) -> tuple[Path, str]:
    """``autoseg plan`` the dataset (skipped work on reruns); returns (workspace root, dataset name)."""
    root = workdir / "autoseg"
    cmd = [sys.executable, "-m", "autoseg", "plan", str(dataset), "--workdir", str(root), "--configs", CONFIG,
           "--no-progress"]
    done = subprocess.run(cmd, env=_env(1), capture_output=True, text=True)
    if done.returncode:
        raise BenchError(f"`{' '.join(cmd)}` failed:\n{done.stdout}{done.stderr}")
    return root, dataset.name


def setup_nnunet(args, name: str, splits) -> Path:
    """Private nnUNet_preprocessed folder: links to nnU-Net's files, our fold split. Returns its path."""
    ref = args.nnunet_preprocessed / name
    if not (ref / "nnUNetPlans.json").is_file() or not (ref / f"nnUNetPlans_{CONFIG}").is_dir():
        raise BenchError(f"{ref}: no nnUNetPlans.json / nnUNetPlans_{CONFIG}; run `nnUNet_preprocessed="
                         f"{args.nnunet_preprocessed} nnUNetv2_plan_and_preprocess -d {dataset_id(name)} -c "
                         f"{CONFIG}` in nnU-Net's environment, or pass --nnunet-preprocessed")
    own = args.workdir / "nnunet" / "preprocessed" / name
    own.mkdir(parents=True, exist_ok=True)
    for item in ref.iterdir():
        if item.name != "splits_final.json" and not (own / item.name).exists():
            (own / item.name).symlink_to(item)
    folds = [{"train": list(f.train), "val": list(f.val)} for f in splits.folds]
    (own / "splits_final.json").write_text(json.dumps(folds, indent=1))
    return own.parent


def install_trainer(venv: Path) -> None:
    """Copy the budget trainer into nnU-Net's package (where ``-tr`` looks for trainers)."""
    python = venv / "bin" / "python"
    if not python.is_file():
        raise BenchError(f"{python} not found; pass --nnunet-venv (a virtual environment with nnunetv2 installed)")
    found = subprocess.run([str(python), "-c", "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
                           capture_output=True, text=True)
    if found.returncode:
        raise BenchError(f"nnunetv2 does not import in {venv}:\n{found.stderr}")
    target = Path(found.stdout.strip()) / "training" / "nnUNetTrainer" / f"{TRAINER_NAME}.py"
    if not target.is_file() or target.read_text() != TRAINER_SOURCE.read_text():
        shutil.copyfile(TRAINER_SOURCE, target)


def compare_plans(ours, nn_plans: dict) -> list[tuple[str, object, object]]:
    """Rows (what, autoseg, nnU-Net) of the network/patch settings; raises when they differ."""
    arch = nn_plans["configurations"][CONFIG]["architecture"]["arch_kwargs"]
    theirs = nn_plans["configurations"][CONFIG]
    rows = [("patch size", list(ours.patch_size), theirs["patch_size"]),
            ("features per stage", list(ours.features), arch["features_per_stage"]),
            ("strides", [list(s) for s in ours.strides], arch["strides"]),
            ("kernel sizes", [list(k) for k in ours.kernel_sizes], arch["kernel_sizes"]),
            ("convs per encoder stage", list(ours.blocks_per_stage), arch["n_conv_per_stage"])]
    bad = [r for r in rows if r[1] != r[2]]
    if bad:
        raise BenchError("the two plans differ, so the comparison would not be like for like: "
                         + "; ".join(f"{w}: autoseg {a} vs nnU-Net {b}" for w, a, b in bad))
    return rows + [("plan batch size", ours.batch_size, theirs["batch_size"])]


def dataset_id(name: str) -> int:
    if not (name.startswith("Dataset") and name[7:10].isdigit()):
        raise BenchError(f"dataset folder '{name}' is not named DatasetXXX_Name (nnU-Net needs the number)")
    return int(name[7:10])


def _env(threads: int, extra: dict | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads))
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


# -------------------------------------------------------------------------------------------- workers
def autoseg_command(args, spec: dict, tag: str) -> list[str]:
    path = args.workdir / f"{tag}.spec.json"
    path.write_text(json.dumps(spec))
    return [sys.executable, str(Path(__file__).resolve()), "--worker", str(path)]


def nnunet_command(args, name: str, fold) -> list[str]:
    return [str(args.nnunet_venv / "bin" / "nnUNetv2_train"), str(dataset_id(name)), CONFIG, str(fold),
            "-tr", TRAINER_NAME, "-device", args.device]


def nnunet_env(args, pre: Path, results: Path, timing: Path, budget: dict) -> dict:
    return _env(args.threads, {
        "PATH": f"{args.nnunet_venv / 'bin'}:{os.environ.get('PATH', '')}", "nnUNet_raw": args.dataset.parent,
        "nnUNet_preprocessed": pre, "nnUNet_results": results, "nnUNet_n_proc_DA": args.workers,
        "nnUNet_def_n_proc": args.threads, "nnUNet_compile": "true" if args.compile else "false",
        "NNUNET_BUDGET_THREADS": args.threads,
        "NNUNET_BUDGET_TIMING": timing, **({"NNUNET_BUDGET_BATCH": args.batch} if args.batch else {}),
        **{f"NNUNET_BUDGET_{k}": v for k, v in budget.items()}})


def run_worker(spec_path: Path) -> None:
    """autoseg side, in its own process: a burst (build_run + fit, no validation) or a budget run
    (autoseg.api.train: checkpoints, logs and the final validation, as `autoseg train` runs it)."""
    spec = json.loads(spec_path.read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    from autoseg import api
    from autoseg.planning.plans import Plans
    from autoseg.splits import Splits
    from autoseg.training import ddp
    from autoseg.training.session import TrainJob, TrainRequest, build_run
    from autoseg.training.trainer import fit
    from autoseg.workspace import Workspace

    ws, name, fold = Workspace(Path(spec["workdir"])), spec["dataset"], spec["fold"]
    clock = make_clock(spec)
    if spec["mode"] == "budget":
        api.train(ws, TrainRequest(name, (fold,), config=CONFIG, settings=spec["settings"]), progress=False,
                  callbacks=[clock])
        return
    from autoseg.training.trainer import TrainSettings

    plans = Plans.load(ws.plans_file(name, "autosegPlans"))
    arch = plans.configurations[CONFIG].architecture
    job = TrainJob(ws, name, plans, CONFIG, arch, fold, Splits.load(ws.splits_file(name)).fold(fold))
    run, loaders = build_run(job, TrainSettings(**spec["settings"]), ddp.SINGLE)
    run.run_dir = Path(spec["run_dir"])  # a burst writes beside the workspace, not into its run folder
    fit(run, loaders[0], loaders[1], [clock])


def make_clock(spec: dict):
    """Callback recording step end times per epoch (same JSON as the nnU-Net trainer writes) and, with
    a budget, applying the time-based poly learning rate and the stop rule of the nnU-Net side."""
    import torch

    from autoseg.training.trainer import Callback
    from proctree import tree_cpu_seconds  # benchmarks/ is on sys.path: this script runs as the worker

    budget = spec.get("budget_s")
    out = Path(spec["timing"])

    class Clock(Callback):
        def __init__(self):
            self.data = {"step_times": [], "cpu_times": [], "lrs": [], "train_started": None, "train_ended": None,
                         "epochs_done": 0}
            self.epoch_started = 0.0

        def write(self):
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data))
            os.replace(tmp, out)

        def on_train_start(self, run):
            cfg_batch = run.record.plans["configurations"][CONFIG]["batch_size"]
            self.data.update(train_started=time.perf_counter(), threads=torch.get_num_threads(),
                             precision="fp32" if run.amp_dtype is None else str(run.amp_dtype).replace("torch.", ""),
                             batch_size=run.settings.batch_size or cfg_batch)

        def on_epoch_start(self, run, epoch):
            self.epoch_started = now = time.perf_counter()
            if budget:
                fraction = min((now - self.data["train_started"]) / budget, 1.0)
                for group in run.optimizer.param_groups:
                    group["lr"] = run.settings.lr * (1 - fraction) ** run.settings.poly_exponent
            self.data["step_times"].append([])
            self.data["cpu_times"].append([])
            self.data["lrs"].append(run.optimizer.param_groups[0]["lr"])

        def on_batch_end(self, run, epoch, step, loss):  # the step has finished (CPU: synchronous)
            self.data["step_times"][-1].append(time.perf_counter())
            self.data["cpu_times"][-1].append(tree_cpu_seconds())

        def on_epoch_end(self, run, record):
            now = time.perf_counter()
            self.data["epochs_done"] = record["epoch"] + 1
            if budget and now - self.data["train_started"] + (now - self.epoch_started) / 2 >= budget:
                run.stop_requested = True
            self.write()

        def on_train_end(self, run):
            self.data["train_ended"] = time.perf_counter()
            self.write()

    return Clock()


# ------------------------------------------------------------------------------------------- measures
def burst_figures(timing: Path, warmup: int, iters: int) -> tuple[float, float]:
    """(iterations/s, process-tree CPU seconds per iteration) over the ``iters`` steps after ``warmup``
    (first epoch of the timing file): from the end of the last warm-up step to the end of the last step."""
    data = json.loads(timing.read_text())
    steps, cpu = data["step_times"][0], data["cpu_times"][0]
    if len(steps) < warmup + iters or len(cpu) < warmup + iters:
        raise BenchError(f"{timing}: {len(steps)} steps recorded, expected {warmup + iters}")
    first, last = warmup - 1, warmup + iters - 1
    return iters / (steps[last] - steps[first]), (cpu[last] - cpu[first]) / iters


def training_stats(timing: dict) -> dict:
    """Iterations, epochs, training time, steady iterations/s and process-tree CPU seconds per iteration
    (step-to-step within epochs: validation and epoch ends left out)."""
    epochs = timing["step_times"]
    intervals = sum(len(e) - 1 for e in epochs)
    span = sum(e[-1] - e[0] for e in epochs if len(e) > 1)
    cpu = sum(e[-1] - e[0] for e in timing.get("cpu_times", []) if len(e) > 1)
    return {"iterations": sum(len(e) for e in epochs), "epochs": len(epochs),
            "cpu_per_it": cpu / intervals if intervals and timing.get("cpu_times") else float("nan"),
            "train_minutes": (timing["train_ended"] - timing["train_started"]) / 60,
            "rate": intervals / span if span else float("nan"), "precision": timing.get("precision"),
            "batch_size": timing.get("batch_size"), "threads": timing.get("threads"),
            "last_lr": timing["lrs"][-1] if timing.get("lrs") else None}


def folder_dice(pred_dir: Path, labels_dir: Path, cases, labels: list[int], ending: str) -> float:
    """Foreground-mean Dice of a prediction folder: per class, the mean over cases where it is defined
    (NaN when prediction and reference are both empty), then the mean over classes."""
    import nibabel as nib

    per_class = {c: [] for c in labels}
    for case in cases:
        pred = np.rint(np.asarray(nib.load(pred_dir / f"{case}{ending}").dataobj)).astype(np.int32)
        ref = np.rint(np.asarray(nib.load(labels_dir / f"{case}{ending}").dataobj)).astype(np.int32)
        if pred.shape != ref.shape:
            raise BenchError(f"{pred_dir / (case + ending)}: shape {pred.shape}, reference {ref.shape}")
        for c in labels:
            a, b = pred == c, ref == c
            total = a.sum() + b.sum()
            per_class[c].append(2 * np.logical_and(a, b).sum() / total if total else np.nan)
    return float(np.mean([np.nanmean(v) for v in per_class.values()]))


class GpuSampler:
    """``nvidia-smi`` utilisation (%) and memory (MiB) of GPU 0 every 0.5 s while running; a no-op on
    machines without it (or with ``--device cpu``)."""

    def __init__(self, device: str):
        self.enabled = device == "cuda" and shutil.which("nvidia-smi") is not None
        self.proc = None

    def __enter__(self):
        if self.enabled:
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "-i", "0",
                                          "--format=csv,noheader,nounits", "-lms", "500"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc):
        self.samples = []
        if self.proc is not None:
            self.proc.terminate()
            out, _ = self.proc.communicate()
            for line in out.splitlines():
                parts = [x.strip() for x in line.split(",")]
                if len(parts) == 2 and all(x.replace(".", "").isdigit() for x in parts):
                    self.samples.append((float(parts[0]), float(parts[1])))
        return False

    def summary(self) -> dict | None:
        if not getattr(self, "samples", None):
            return None
        util = [u for u, _ in self.samples]
        return {"util_median": statistics.median(util), "util_mean": statistics.fmean(util),
                "mem_max_mib": max(m for _, m in self.samples), "samples": len(util)}


def data_wait(run_dir: Path) -> float | None:
    """Mean data-wait fraction of autoseg's epochs (``log.jsonl``), None when it has none."""
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return None
    values = [json.loads(line).get("data_wait_fraction") for line in log.read_text().splitlines() if line.strip()]
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def loadavg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def timed_process(cmd, env, log: Path, ends: dict, key: str):
    """Start ``cmd`` (output to ``log``); a thread records perf_counter at its exit in ``ends[key]``."""
    handle = log.open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=HERE.parent)

    def wait():
        proc.wait()
        ends[key] = time.perf_counter()
        handle.close()

    thread = threading.Thread(target=wait)
    thread.start()
    return proc, thread


def check(proc, log: Path, what: str) -> None:
    if proc.returncode:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise BenchError(f"{what} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")


# ---------------------------------------------------------------------------------------------- phases
def autoseg_settings(args, **over) -> dict:
    s = {"device": args.device, "amp": args.amp, "seed": args.seed, "num_workers": args.workers,
         "compile": args.compile, **over}
    return {**s, **({"batch_size": args.batch} if args.batch else {})}


def throughput(args, ws: Path, name: str, pre: Path) -> dict:
    """Interleaved bursts; per tool the lists of iterations/s and of process-tree CPU seconds per
    iteration, the 1-minute load average sampled every few seconds during each burst's measured
    window and before -> after each burst."""
    bursts = args.workdir / "bursts"
    shutil.rmtree(bursts, ignore_errors=True)
    bursts.mkdir(parents=True)
    steps = args.warmup + args.iters
    rates: dict[str, list[float]] = {"autoseg": [], "nnunet": []}
    cpu: dict[str, list[float]] = {"autoseg": [], "nnunet": []}
    loads: list[str] = []
    samples: list[float] = []
    gpus: dict[str, list[dict]] = {"autoseg": [], "nnunet": []}
    for r in range(args.rounds):
        order = ("autoseg", "nnunet") if r % 2 == 0 else ("nnunet", "autoseg")  # ABBA: no tool always first
        for tool in order:
            timing, log = bursts / f"{tool}{r}.timing.json", bursts / f"{tool}{r}.log"
            if tool == "autoseg":
                spec = {"mode": "burst", "workdir": str(ws), "dataset": name, "fold": args.fold, "threads": args.threads,
                        "timing": str(timing), "run_dir": str(bursts / f"autoseg{r}"),
                        "settings": autoseg_settings(args, epochs=1, iters_per_epoch=steps, val_iters=1)}
                cmd, env = autoseg_command(args, spec, f"bursts/autoseg{r}"), _env(args.threads)
            else:
                cmd = nnunet_command(args, name, args.fold)
                env = nnunet_env(args, pre, bursts / f"nnunet{r}", timing,
                                 {"EPOCHS": 1, "ITERS": steps, "VAL_ITERS": 1, "SKIP_FINAL_VALIDATION": 1})
            before = loadavg()
            with GpuSampler(args.device) as gpu:
                proc, thread = timed_process(cmd, env, log, {}, tool)
                while thread.is_alive():  # load during the burst (start-up included; samples every 5 s)
                    thread.join(5.0)
                    samples.append(os.getloadavg()[0])
            check(proc, log, f"{tool} burst {r}")
            if gpu.summary():
                gpus[tool].append(gpu.summary())
            rate, cpu_per_it = burst_figures(timing, args.warmup, args.iters)
            rates[tool].append(rate)
            cpu[tool].append(cpu_per_it)
            loads.append(f"{tool}{r}: {before} -> {loadavg()}")
            print(f"  round {r} {tool:8s} {cpu_per_it:6.2f} CPU-s/it  {rate:.3f} it/s   "
                  f"(load {loads[-1].split(': ')[1]})", flush=True)
    return {"rates": rates, "cpu_per_it": cpu, "loads": loads, "load_samples": samples, "gpu": gpus}


def budget_runs(args, ws: Path, name: str, pre: Path) -> dict:
    """Train each for the budget (in parallel or one after the other), then their final validations."""
    budget_s = args.budget_minutes * 60
    from autoseg.workspace import Workspace

    a_dir = Workspace(ws).run_dir(name, "unet", "autosegPlans", CONFIG, args.fold)
    n_results = args.workdir / "nnunet" / "results"
    n_dir = n_results / name / f"{TRAINER_NAME}__nnUNetPlans__{CONFIG}" / f"fold_{args.fold}"
    shutil.rmtree(a_dir, ignore_errors=True)
    shutil.rmtree(n_dir, ignore_errors=True)
    timings = {"autoseg": args.workdir / "budget_autoseg.timing.json", "nnunet": args.workdir / "budget_nnunet.timing.json"}
    own = args.autoseg_budget == "own"  # autoseg's --time-budget instead of the shared time-poly rule
    spec = {"mode": "budget", "workdir": str(ws), "dataset": name, "fold": args.fold, "threads": args.threads,
            "timing": str(timings["autoseg"]), "budget_s": None if own else budget_s,
            "settings": autoseg_settings(args, epochs=100000 if not own else 1000,
                                         iters_per_epoch=args.iters_per_epoch, val_iters=args.val_iters,
                                         val_mirroring=not args.no_val_mirroring,
                                         **({"time_budget": budget_s} if own else {}))}
    jobs = {"autoseg": (autoseg_command(args, spec, "budget_autoseg"), _env(args.threads)),
            "nnunet": (nnunet_command(args, name, args.fold),
                       nnunet_env(args, pre, n_results, timings["nnunet"],
                                  {"EPOCHS": 100000, "ITERS": args.iters_per_epoch, "VAL_ITERS": args.val_iters,
                                   "MINUTES": args.budget_minutes,
                                   **({"NO_MIRRORING": 1} if args.no_val_mirroring else {})}))}
    ends: dict[str, float] = {}
    loads = [f"start: {loadavg()}"]
    started = {}
    running = []
    gpu_use = {}
    with GpuSampler(args.device if args.budget_mode == "parallel" else "none") as both:
        for tool, (cmd, env) in jobs.items():
            log = args.workdir / f"budget_{tool}.log"
            started[tool] = time.perf_counter()
            with GpuSampler(args.device if args.budget_mode == "sequential" else "none") as gpu:
                proc, thread = timed_process(cmd, env, log, ends, tool)
                running.append((tool, proc, thread, log))
                if args.budget_mode == "sequential":
                    thread.join()
                    loads.append(f"after {tool}: {loadavg()}")
            gpu_use[tool] = gpu.summary()
        for tool, proc, thread, log in running:
            thread.join()
            check(proc, log, f"{tool} budget run")
    gpu_use["both"] = both.summary()
    loads.append(f"end: {loadavg()}")
    labels_dir = args.dataset / "labelsTr"
    spec_json = json.loads((args.dataset / "dataset.json").read_text())
    classes = sorted(int(v) for k, v in spec_json["labels"].items() if int(v) > 0 and k != "ignore")
    ending = spec_json.get("file_ending", ".nii.gz")
    out = {"loads": loads, "gpu": gpu_use}
    for tool, run_dir in (("autoseg", a_dir), ("nnunet", n_dir)):
        timing = json.loads(timings[tool].read_text())
        summary = json.loads((run_dir / "validation" / "summary.json").read_text())
        own = summary["foreground_mean"]
        own = own["Dice"] if isinstance(own, dict) else own
        cases = [p.name[: -len(ending)] for p in sorted((run_dir / "validation").glob(f"*{ending}"))]
        out[tool] = {**training_stats(timing), "own_dice": own, "cases": len(cases),
                     "common_dice": folder_dice(run_dir / "validation", labels_dir, cases, classes, ending),
                     "validation_minutes": (ends[tool] - timing["train_ended"]) / 60,
                     "process_minutes": (ends[tool] - started[tool]) / 60, "run_dir": str(run_dir),
                     "data_wait": data_wait(run_dir) if tool == "autoseg" else None}
    return out


# ---------------------------------------------------------------------------------------------- report
def report(args, plan_rows, tp: dict | None, budget: dict | None) -> str:
    lines = [f"Dataset {args.dataset.name}, fold {args.fold}; batch {args.batch or 'from plans'}, final validation "
             f"{'without' if args.no_val_mirroring else 'with'} mirroring, "
             f"{args.threads} threads, {args.workers} augmentation worker(s) each; load average at start "
             f"{args.load_at_start}", "",
             "| setting | autoseg | nnU-Net |", "|---|---|---|"]
    lines += [f"| {w} | {a} | {b} |" for w, a, b in plan_rows]
    lines += ["", "| measure | autoseg | nnU-Net | autoseg / nnU-Net | target |", "|---|---|---|---|---|"]
    if tp:
        ca, cn = tp["cpu_per_it"]["autoseg"], tp["cpu_per_it"]["nnunet"]
        speed = statistics.median(cn) / statistics.median(ca)  # throughput per CPU-second, autoseg / nnU-Net
        lines.append(f"| CPU-s per iteration (process tree), median of {args.rounds} interleaved bursts "
                     f"({args.iters} it after {args.warmup} warm-up) | {statistics.median(ca):.2f} | "
                     f"{statistics.median(cn):.2f} | throughput {speed:.2f}x | >= 1.2x "
                     f"{'met' if speed >= 1.2 else 'NOT met'} |")
        lines.append(f"| per burst CPU-s/it | {', '.join(f'{x:.2f}' for x in ca)} | "
                     f"{', '.join(f'{x:.2f}' for x in cn)} | {', '.join(f'{y / x:.2f}' for x, y in zip(ca, cn))} | |")
        a, n = tp["rates"]["autoseg"], tp["rates"]["nnunet"]
        ratio = statistics.median(a) / statistics.median(n)
        lines.append(f"| wall it/s, median of the same bursts | {statistics.median(a):.3f} | "
                     f"{statistics.median(n):.3f} | {ratio:.2f}x | |")
        lines.append(f"| per burst it/s | {', '.join(f'{x:.3f}' for x in a)} | {', '.join(f'{x:.3f}' for x in n)} "
                     f"| {', '.join(f'{x / y:.2f}' for x, y in zip(a, n))} | |")
        ga, gn = tp.get("gpu", {}).get("autoseg"), tp.get("gpu", {}).get("nnunet")
        if ga and gn:
            lines.append(f"| GPU utilisation during the bursts, median % (start-up included) | "
                         f"{statistics.median(g['util_median'] for g in ga):.0f} | "
                         f"{statistics.median(g['util_median'] for g in gn):.0f} | | |")
            lines.append(f"| GPU memory, most used in a burst | {max(g['mem_max_mib'] for g in ga):.0f} MiB | "
                         f"{max(g['mem_max_mib'] for g in gn):.0f} MiB | | |")
    if budget:
        a, n = budget["autoseg"], budget["nnunet"]
        diff = a["own_dice"] - n["own_dice"]
        lines += [
            f"| training precision | {a['precision']} | {n['precision']} | | |",
            f"| training time in the {args.budget_minutes:g}-min budget ({args.budget_mode}) | "
            f"{a['train_minutes']:.1f} min | {n['train_minutes']:.1f} min | | |",
            f"| iterations (epochs) trained | {a['iterations']} ({a['epochs']}) | {n['iterations']} ({n['epochs']}) "
            f"| {a['iterations'] / n['iterations']:.2f}x | |",
            f"| training it/s during the budget run | {a['rate']:.3f} | {n['rate']:.3f} | "
            f"{a['rate'] / n['rate']:.2f}x | |",
            f"| CPU-s per iteration during the budget run | {a['cpu_per_it']:.2f} | {n['cpu_per_it']:.2f} | "
            f"throughput {n['cpu_per_it'] / a['cpu_per_it']:.2f}x | |",
            f"| final validation Dice, own summary.json ({a['cases']} / {n['cases']} cases) | {a['own_dice']:.4f} | "
            f"{n['own_dice']:.4f} | {diff:+.4f} | >= 0 {'met' if diff >= 0 else 'NOT met'} |",
            f"| final validation Dice, one evaluator for both | {a['common_dice']:.4f} | {n['common_dice']:.4f} | "
            f"{a['common_dice'] - n['common_dice']:+.4f} | |",
            f"| final validation wall time | {a['validation_minutes']:.1f} min | {n['validation_minutes']:.1f} min "
            f"| | |",
            f"| whole process (start-up, training, validation) | {a['process_minutes']:.1f} min | "
            f"{n['process_minutes']:.1f} min | | |"]
        if a.get("data_wait") is not None:
            lines.append(f"| data-wait fraction of the steps (autoseg's log) | {a['data_wait']:.3f} | | | |")
        g = budget.get("gpu", {})
        if g.get("autoseg") and g.get("nnunet"):
            lines.append(f"| GPU utilisation during the run, median % | {g['autoseg']['util_median']:.0f} | "
                         f"{g['nnunet']['util_median']:.0f} | | |")
        elif g.get("both"):
            lines.append(f"| GPU utilisation, both runs at once, median % | {g['both']['util_median']:.0f} | | | |")
    lines.append("")
    if tp:
        ls = tp.get("load_samples") or [float("nan")]
        lines.append(f"1-minute load average during the bursts: median {statistics.median(ls):.1f}, range "
                     f"{min(ls):.1f}-{max(ls):.1f} ({len(ls)} samples, 5 s apart)")
        lines.append("Load average (1/5/15 min) before -> after each burst: " + "; ".join(tp["loads"]))
    if budget:
        lines.append("Load average during the budget runs: " + "; ".join(budget["loads"]))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--dataset", type=Path, default=HERE.parent.parent / "shared" / "data" / "Dataset004_Hippocampus")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/train_vs_nnunet"))
    p.add_argument("--nnunet-venv", type=Path, default=Path("/work/nnunet_venv"))
    p.add_argument("--nnunet-preprocessed", type=Path, default=Path("/tmp/nnunet_ref/preprocessed"))
    p.add_argument("--batch", type=int, default=None, help="batch size for both (default: the plans')")
    p.add_argument("--threads", type=int, default=1,
                   help="torch/OMP threads of each trainer (default 1: fairest on a loaded machine)")
    p.add_argument("--workers", type=int, default=1, help="augmentation worker processes of each (default 1)")
    p.add_argument("--amp", default="auto", help="autoseg --amp (default auto, its own default)")
    p.add_argument("--seed", type=int, default=12345, help="autoseg seed (nnU-Net is not seeded)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved throughput bursts per tool")
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps per burst (at least 1)")
    p.add_argument("--iters", type=int, default=8, help="measured steps per burst")
    p.add_argument("--budget-minutes", type=float, default=20.0, help="wall-clock training budget of each")
    p.add_argument("--budget-mode", choices=["parallel", "sequential"], default="parallel",
                   help="train both at once (same machine load; default) or one after the other")
    p.add_argument("--iters-per-epoch", type=int, default=20, help="training iterations per epoch in the budget runs")
    p.add_argument("--val-iters", type=int, default=4, help="pseudo-Dice validation batches per epoch")
    p.add_argument("--no-val-mirroring", action="store_true",
                   help="final validation of both without mirroring test-time augmentation (8x faster)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device of both trainers (default cpu)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile in both (autoseg --compile; nnU-Net's nnUNet_compile, its CUDA default)")
    p.add_argument("--autoseg-budget", choices=["time-poly", "own"], default="time-poly",
                   help="autoseg's side of the budget run: the shared time-based poly rule (default) or its own "
                        "--time-budget (fitted epochs; training plus final validation within the budget)")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-budget", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.worker is None and args.warmup < 1:
        p.error("--warmup must be at least 1 (the measured window starts at the end of a warm-up step)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        run_worker(args.worker)
        return 0
    from autoseg.planning.plans import Plans
    from autoseg.splits import Splits

    args.dataset, args.workdir = args.dataset.resolve(), args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.load_at_start = loadavg()
    print(f"setup (load average {args.load_at_start}) ...", flush=True)
    ws, name = plan_autoseg(args.dataset, args.workdir)
    pre_dir = ws / "preprocessed" / name
    plans, splits = Plans.load(pre_dir / "plans.json"), Splits.load(pre_dir / "splits.json")
    nn_pre = setup_nnunet(args, name, splits)
    plan_rows = compare_plans(plans.configuration(CONFIG), json.loads((nn_pre / name / "nnUNetPlans.json").read_text()))
    install_trainer(args.nnunet_venv)
    tp = budget = None
    if not args.skip_throughput:
        print("throughput bursts ...", flush=True)
        tp = throughput(args, ws, name, nn_pre)
    if not args.skip_budget:
        print(f"training each for {args.budget_minutes:g} min ({args.budget_mode}), then final validation ...",
              flush=True)
        budget = budget_runs(args, ws, name, nn_pre)
    text = report(args, plan_rows, tp, budget)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"throughput": tp, "budget": budget, "command": sys.argv}, indent=1,
                                        default=str))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        sys.exit(f"error: {e}")
