"""How fast is the training data pipeline, and does it starve the model?

Writes synthetic preprocessed cases (``storage.write_case``), then prints
1. the time to build one batch in this process (no augmentation / nnU-Net defaults / every
   transform forced on),
2. loader throughput (batches/s) with 0, 1, 2 worker processes,
3. the time of one DynUNet training step (4 stages, same patch and batch), and the fraction of a
   short training run spent waiting for data with each worker count.

    OMP_NUM_THREADS=1 python benchmarks/data_pipeline.py --patch 40 56 40 --batch 2
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autoseg.planning.plans import ConfigurationPlan
from autoseg.storage import CaseProperties, write_case
from autoseg.training.augmentation import AugmentSettings
from autoseg.training.loader import BatchSpec, PatchBatches, Sampling, Workers, make_train_loader

ALL_ON = AugmentSettings(**{f.name: 1.0 for f in dataclasses.fields(AugmentSettings) if f.name.startswith("p_")})


def write_cases(folder: Path, n: int, shape: tuple[int, ...], seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(n):
        cid = f"case_{i:03d}"
        image = rng.standard_normal((1, *shape)).astype(np.float32)
        seg = np.zeros((1, *shape), np.int8)
        c = [s // 2 for s in shape]
        seg[0, c[0] - 5:c[0] + 5, c[1] - 6:c[1] + 6, c[2] - 5:c[2] + 5] = 1
        seg[0, c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 2:c[2] + 2] = 2
        locations = {k: np.argwhere(seg[0] == k).astype(np.int32) for k in (1, 2)}
        props = CaseProperties(cid, shape, (1.0,) * 3, tuple(tuple(r) for r in np.eye(4)),
                               tuple((0, s) for s in shape), shape, (1.0,) * 3, shape, (1.0,) * 3, (1, 2))
        write_case(folder, props, image, seg, locations)
        ids.append(cid)
    return ids


def config_for(patch: tuple[int, ...], batch: int) -> ConfigurationPlan:
    strides = ((1, 1, 1),) + ((2, 2, 2),) * 3
    return ConfigurationPlan("3d_fullres", 3, (1.0,) * 3, patch, patch, batch, ((3, 3, 3),) * 4, strides,
                             (32, 64, 128, 256), False, "bench")


def time_batches(folder, ids, patch, batch, augment, n) -> float:
    data = PatchBatches(folder, ids, BatchSpec(patch, batch, 0.33, (1, 2), augment, seed=0))
    data[0]
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        data[i]
    return (time.perf_counter() - t0) / n


def loader_throughput(folder, ids, config, batch, workers, n) -> float:
    it = make_train_loader(folder, ids, config, Sampling(batch_size=batch, seed=0, foreground_classes=(1, 2)),
                           Workers(num_workers=workers))
    next(it)  # start-up (worker processes) not counted
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    it.close()
    return n / (time.perf_counter() - t0)


def make_model_step(patch, batch):
    from monai.losses import DiceCELoss
    from monai.networks.nets import DynUNet

    net = DynUNet(3, 1, 3, kernel_size=[3] * 4, strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2],
                  filters=[32, 64, 128, 256], norm_name="instance", res_block=False)
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    def step(image, target):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(image), target)
        loss.backward()
        opt.step()
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patch", type=int, nargs=3, default=(40, 56, 40))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--shape", type=int, nargs=3, default=(56, 72, 56), help="synthetic case shape")
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--workers", type=int, nargs="+", default=(0, 1, 2))
    p.add_argument("--batches", type=int, default=20, help="batches timed per measurement")
    p.add_argument("--steps", type=int, default=8, help="training steps per worker count")
    a = p.parse_args()
    patch, shape = tuple(a.patch), tuple(a.shape)
    print(f"patch {patch}, batch {a.batch}, cases {a.cases} x {shape}, torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ids = write_cases(folder, a.cases, shape)
        config = config_for(patch, a.batch)
        print("1. one batch, in process:")
        for name, aug in [("no augmentation", None), ("nnU-Net defaults", AugmentSettings()), ("all forced on", ALL_ON)]:
            print(f"   {name:18s} {1000 * time_batches(folder, ids, patch, a.batch, aug, a.batches):7.1f} ms")
        print("2. loader throughput (nnU-Net default augmentation):")
        for w in a.workers:
            rate = loader_throughput(folder, ids, config, a.batch, w, a.batches)
            print(f"   {w} worker(s): {rate:6.1f} batches/s  ({1000 / rate:6.1f} ms/batch)")
        step = make_model_step(patch, a.batch)
        x = torch.randn(a.batch, 1, *patch)
        y = torch.randint(0, 3, (a.batch, 1, *patch))
        step(x, y)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            step(x, y)
            times.append(time.perf_counter() - t0)
        print(f"3. DynUNet (4 stages 32-256) training step: {statistics.median(times):.3f} s (median of 3)")
        for w in a.workers:
            it = make_train_loader(folder, ids, config, Sampling(batch_size=a.batch, seed=0, foreground_classes=(1, 2)),
                                   Workers(num_workers=w))
            step(*next(it))
            it.take_wait_seconds()
            t0 = time.perf_counter()
            for _ in range(a.steps):
                step(*next(it))
            total = time.perf_counter() - t0
            wait = it.take_wait_seconds()
            it.close()
            print(f"   {w} worker(s): {total / a.steps:.3f} s/step, waiting for data {100 * wait / total:5.1f} %")


if __name__ == "__main__":
    main()
