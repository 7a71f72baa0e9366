"""bf16 autocast vs fp32 for CPU training: step time and Dice at equal iterations.

Decides ``CPU_BF16_BY_DEFAULT`` in autoseg/core/runtime.py. Prints:

1. the median time of one training step (forward, Dice+CE loss with deep supervision, backward,
   SGD) of a 4-stage DynUNet (32-256 features) on a (2, 1, 40, 56, 40) batch, fp32 and bf16;
2. the Dice reached after the same number of iterations on a small learnable synthetic task
   (bright and dark blobs in noise, 16^3 volumes, 4-stage net with 8-64 features), for several seeds,
   so the seed-to-seed spread shows what "within noise" means. (16^3 keeps the bf16 runs affordable
   on CPUs without native bf16, where bf16 convolutions are emulated and 10-100x slower.)

    OMP_NUM_THREADS=2 python benchmarks/bf16_cpu.py [--steps 6] [--iterations 150] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from autoseg.models import build_model
from autoseg.planning.plans import ConfigurationPlan
from autoseg.training.losses import make_loss
from autoseg.core.runtime import cpu_supports_bf16


def plan(patch, features) -> ConfigurationPlan:
    n = len(features)
    return ConfigurationPlan(name="3d_fullres", spatial_dims=3, spacing=(1.0, 1.0, 1.0), median_shape=tuple(patch),
                             patch_size=tuple(patch), batch_size=2, kernel_sizes=((3, 3, 3),) * n,
                             strides=((1, 1, 1),) + ((2, 2, 2),) * (n - 1), features=tuple(features),
                             batch_dice=False, data_identifier="bench")


def step(net, loss_fn, opt, x, y, dtype):
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = loss_fn(net(x), y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
    opt.step()
    return float(loss.detach())


def step_times(steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    p = plan((40, 56, 40), (32, 64, 128, 256))
    x = torch.randn(2, 1, 40, 56, 40)
    y = torch.randint(0, 3, (2, 1, 40, 56, 40))
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    nets = {}
    for name in times:
        net = build_model("unet", p, 1, 3, True)
        nets[name] = (net, torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True))
    loss_fn = make_loss(3, False)
    for i in range(steps + 1):  # interleaved, so machine load hits both alike; step 0 is warm-up
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            net, opt = nets[name]
            t0 = time.perf_counter()
            step(net, loss_fn, opt, x, y, dtype)
            if i:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


SIZE = 16  # edge of the synthetic volumes


def synthetic_batch(rng: np.random.Generator, n: int, size: int = SIZE):
    """Volumes with 1-3 blobs of class 1 (bright) and class 2 (dark), noisy background."""
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), -1).astype(np.float32)
    images, labels = [], []
    for _ in range(n):
        lab = np.zeros((size,) * 3, np.int64)
        for cls in (1, 2):
            for _ in range(rng.integers(1, 4)):
                c = rng.uniform(3, size - 3, 3)
                r = rng.uniform(2, 4.5, 3)
                lab[(((grid - c) / r) ** 2).sum(-1) < 1] = cls
        img = rng.normal(0, 1, lab.shape) + 2.0 * (lab == 1) - 2.0 * (lab == 2)
        images.append(img[None].astype(np.float32))
        labels.append(lab[None])
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))


def dice_per_class(pred: torch.Tensor, y: torch.Tensor) -> list[float]:
    out = []
    for c in (1, 2):
        p, t = pred == c, y[:, 0] == c
        out.append(float(2 * (p & t).sum() / max(int(p.sum() + t.sum()), 1)))
    return out


def train_dice(seed: int, dtype, iterations: int) -> list[float]:
    torch.manual_seed(seed)
    net = build_model("unet", plan((SIZE,) * 3, (8, 16, 32, 64)), 1, 3, True)
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    loss_fn = make_loss(3, False)
    rng = np.random.default_rng(1000 + seed)  # same batches for fp32 and bf16 of one seed
    for it in range(iterations):
        for g in opt.param_groups:
            g["lr"] = 1e-2 * (1 - it / iterations) ** 0.9
        net.train()
        step(net, loss_fn, opt, *synthetic_batch(rng, 2), dtype)
    net.eval()
    x, y = synthetic_batch(np.random.default_rng(999), 8)  # fixed held-out set, evaluated in fp32
    with torch.no_grad():
        pred = net(x).argmax(1)
    return dice_per_class(pred, y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="timed steps per precision (after one warm-up)")
    ap.add_argument("--iterations", type=int, default=150, help="training iterations of the accuracy task")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--skip-timing", action="store_true")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_supports_bf16()}")
    if not args.skip_timing:
        t = step_times(args.steps)
        print(f"step time, 4-stage DynUNet 32-256, batch (2, 1, 40, 56, 40), median of {args.steps}: "
              f"fp32 {t['fp32']:.2f} s, bf16 {t['bf16']:.2f} s, bf16 speed-up x{t['fp32'] / t['bf16']:.2f}")
    rows = {"fp32": [], "bf16": []}
    for seed in args.seeds:
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            t0 = time.perf_counter()
            d = train_dice(seed, dtype, args.iterations)
            rows[name].append(sum(d) / 2)
            print(f"seed {seed} {name}: Dice class1 {d[0]:.4f} class2 {d[1]:.4f} mean {sum(d) / 2:.4f} "
                  f"({time.perf_counter() - t0:.0f} s)")
    for name, vals in rows.items():
        sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
        print(f"{name}: mean Dice over seeds {statistics.mean(vals):.4f} (sd {sd:.4f}) "
              f"after {args.iterations} iterations")
    diffs = [b - a for a, b in zip(rows["fp32"], rows["bf16"])]
    print(f"bf16 - fp32 per seed: {', '.join(f'{d:+.4f}' for d in diffs)}")


if __name__ == "__main__":
    main()
