import dataclasses
import time

import numpy as np
import pytest
import torch

from autoseg.planning.plans import ConfigurationPlan
from autoseg.storage import CaseProperties, write_case
from autoseg.training.augmentation import AugmentSettings
from autoseg.training.loader import Sampling, TimedIterator, Workers, make_train_loader, make_val_loader

SHAPE = (20, 20, 20)
CASES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three tiny cases: noise image, a small cube of class 1 and one voxel of class 2 in a corner."""
    root = tmp_path_factory.mktemp("pre")
    rng = np.random.default_rng(0)
    for i, cid in enumerate(CASES):
        image = rng.standard_normal((1, *SHAPE)).astype(np.float32)
        seg = np.zeros((1, *SHAPE), np.int8)
        seg[0, 2 + i:5 + i, 3:6, 14:17] = 1
        seg[0, 19, 19, 0] = 2
        image[seg > 0] += 12
        locations = {c: np.argwhere(seg[0] == c).astype(np.int32) for c in (1, 2)}
        props = CaseProperties(cid, SHAPE, (1.0,) * 3, tuple(tuple(r) for r in np.eye(4)),
                               tuple((0, s) for s in SHAPE), SHAPE, (1.0,) * 3, SHAPE, (1.0,) * 3, (1, 2))
        write_case(root, props, image, seg, locations)
    return root


def _config(dims=3, patch=(16, 16, 16)):
    strides = ((1,) * dims, (2,) * dims)
    return ConfigurationPlan("3d_fullres" if dims == 3 else "2d", dims, (1.0,) * dims, SHAPE[:dims], patch, 2,
                             ((3,) * dims,) * 2, strides, (8, 16), False, "x")


def _take(folder, n, **kw):
    args = dict(batch_size=2, seed=7, num_workers=0, foreground_classes=(1, 2))
    args.update(kw)
    config = args.pop("config", _config())
    pick = lambda *names: {k: args.pop(k) for k in names if k in args}  # noqa: E731
    workers = Workers(**pick("rank", "world_size", "num_workers"))
    it = make_train_loader(folder, CASES, config, Sampling(**pick("batch_size", "seed", "foreground_classes")),
                           workers, **args)
    out = [next(it) for _ in range(n)]
    it.close()
    return out


def _same(a, b):
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def test_batches_have_documented_shapes_and_types(folder):
    image, target = _take(folder, 1)[0]
    assert image.shape == (2, 1, 16, 16, 16) and image.dtype == torch.float32
    assert target.shape == (2, 1, 16, 16, 16) and target.dtype == torch.int64
    assert set(target.unique().tolist()) <= {0, 1, 2}


def test_2d_configuration_yields_slices(folder):
    image, target = _take(folder, 1, config=_config(2, (16, 16)))[0]
    assert image.shape == (2, 1, 16, 16) and target.shape == (2, 1, 16, 16)


def test_forced_samples_contain_foreground(folder):
    batches = _take(folder, 12, augment=None)
    assert all((target[1] > 0).any() for _, target in batches)   # batch 2 -> the last sample is forced
    assert any((target[1] == 2).any() for _, target in batches)  # the one-voxel class is reachable too
    # without augmentation the image is an exact crop: labelled voxels are the bright ones
    assert all(((image > 6) == (target > 0)).all() for image, target in batches)


def test_same_seed_same_stream_other_seed_other_stream(folder):
    assert _same(_take(folder, 3), _take(folder, 3))
    assert not _same(_take(folder, 3), _take(folder, 3, seed=8))


def test_workers_give_the_same_stream_as_in_process(folder):
    every = AugmentSettings(**{f.name: 1.0 for f in dataclasses.fields(AugmentSettings) if f.name.startswith("p_")})
    workers = _take(folder, 5, num_workers=2, augment=every)
    assert _same(workers, _take(folder, 5, num_workers=0, augment=every))
    assert _same(_take(folder, 5, num_workers=1), _take(folder, 5, num_workers=0))


def test_resume_continues_the_uninterrupted_stream(folder):
    fresh = _take(folder, 6)
    assert _same(_take(folder, 3, start_iteration=3), fresh[3:])


def test_ddp_ranks_draw_different_batches(folder):
    r0 = _take(folder, 3, rank=0, world_size=2)
    r1 = _take(folder, 3, rank=1, world_size=2)
    assert not any(torch.equal(a[0], b[0]) for a, b in zip(r0, r1))
    with pytest.raises(ValueError, match="rank 2"):
        _take(folder, 1, rank=2, world_size=2)


def test_augmentation_changes_batches_and_off_settings_do_not(folder):
    plain = _take(folder, 3, augment=None)
    assert _same(plain, _take(folder, 3, augment=AugmentSettings.off()))
    augmented = _take(folder, 3, augment=AugmentSettings(p_rotation=0.0, p_scaling=0.0, p_mirror=0.0))
    assert not _same(plain, augmented)
    # augmentation draws from its own generator: the same patches are sampled (labels untouched here)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(plain, augmented))


def test_val_loader_repeats_its_batches_without_augmentation(folder):
    val = make_val_loader(folder, CASES, _config(), Sampling(batch_size=2, seed=7), num_batches=3,
                          workers=Workers(num_workers=0))
    first, second = list(val), list(val)
    assert len(first) == 3 and _same(first, second)
    assert not _same(first, _take(folder, 3, augment=None))
    assert all(((image > 6) == (target > 0)).all() for image, target in first)


def test_missing_case_is_reported_with_the_fix(folder):
    with pytest.raises(FileNotFoundError, match="autoseg preprocess"):
        make_train_loader(folder, CASES + ["zzz"], _config(), Sampling(batch_size=2, seed=0), Workers(num_workers=0))


def test_timed_iterator_adds_up_waiting_time():
    def slow():
        while True:
            time.sleep(0.02)
            yield 1
    it = TimedIterator(slow())
    for _ in range(3):
        next(it)
    assert it.batches == 3 and 0.05 < it.take_wait_seconds() < 1.0 and it.wait_seconds == 0.0
