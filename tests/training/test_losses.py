import pytest
import torch
import torch.nn.functional as F

from autoseg.training.losses import (DeepSupervisionLoss, DiceCELoss, RegionDiceBCELoss, deep_supervision_weights,
                                     downsample_labels, labels_to_regions, make_loss, one_hot)


def _labels(seed=0, shape=(2, 1, 8, 8, 8), k=3):
    return torch.randint(0, k, shape, generator=torch.Generator().manual_seed(seed))


def _perfect_logits(target, k):
    return one_hot(target, k) * 40 - 20


def test_deep_supervision_weights_match_nnunet():
    w = deep_supervision_weights(5)
    assert w == pytest.approx((0.5333, 0.2667, 0.1333, 0.0667, 0.0), abs=1e-4)
    assert deep_supervision_weights(1) == (1.0,)
    assert deep_supervision_weights(2) == (1.0, 0.0)


def test_dice_ce_near_zero_for_a_perfect_prediction_and_high_for_a_wrong_one():
    t = _labels()
    loss = DiceCELoss(3, batch_dice=False)
    assert loss(_perfect_logits(t, 3), t).item() < 1e-4
    wrong = _perfect_logits((t + 1) % 3, 3)
    assert loss(wrong, t).item() > 10


def test_dice_ce_is_cross_entropy_plus_foreground_soft_dice():
    t, logits = _labels(), torch.randn(2, 3, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    p, y = torch.softmax(logits, 1)[:, 1:], one_hot(t, 3)[:, 1:]
    axes = (2, 3, 4)
    dice = (2 * (p * y).sum(axes) + 1e-5) / (p.sum(axes) + y.sum(axes) + 1e-5)
    expected = F.cross_entropy(logits, t[:, 0]) + 1 - dice.mean()
    assert DiceCELoss(3, batch_dice=False)(logits, t).item() == pytest.approx(expected.item(), rel=1e-5)
    batch = (2 * (p * y).sum((0, *axes)) + 1e-5) / (p.sum((0, *axes)) + y.sum((0, *axes)) + 1e-5)
    expected_batch = F.cross_entropy(logits, t[:, 0]) + 1 - batch.mean()
    assert DiceCELoss(3, batch_dice=True)(logits, t).item() == pytest.approx(expected_batch.item(), rel=1e-5)


def test_ignore_label_voxels_do_not_influence_the_loss():
    t = _labels()
    t[:, :, :4] = 3  # ignore label = 3, above the classes 0..2
    logits = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
    loss = DiceCELoss(3, batch_dice=False, ignore_label=3)
    value = loss(logits, t)
    value.backward()
    assert logits.grad[:, :, :4].abs().max() == 0
    changed = logits.detach().clone()
    changed[:, :, :4] = torch.randn(2, 3, 4, 8, 8) * 10
    assert loss(changed, t).item() == pytest.approx(value.item(), rel=1e-6)


def test_all_ignored_batch_gives_a_finite_loss():
    t = torch.full((1, 1, 4, 4, 4), 3)
    logits = torch.randn(1, 3, 4, 4, 4, requires_grad=True)
    value = DiceCELoss(3, False, ignore_label=3)(logits, t)
    value.backward()
    assert torch.isfinite(value)


def test_labels_to_regions_makes_one_mask_per_region():
    t = torch.tensor([0, 1, 2, 3]).view(1, 1, 4, 1, 1)
    r = labels_to_regions(t, [(1, 2, 3), (2, 3), (3,)])
    assert r[0, :, :, 0, 0].tolist() == [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]]


def test_region_loss_uses_sigmoid_bce_and_dice_over_every_region():
    regions = [(1, 2), (2,)]
    t = _labels()
    target = labels_to_regions(t, regions)
    loss = RegionDiceBCELoss(regions, batch_dice=False)
    assert loss(target * 40 - 20, t).item() < 1e-4
    logits = torch.randn(2, 2, 8, 8, 8, generator=torch.Generator().manual_seed(2))
    p = torch.sigmoid(logits)
    dice = (2 * (p * target).sum((2, 3, 4)) + 1e-5) / (p.sum((2, 3, 4)) + target.sum((2, 3, 4)) + 1e-5)
    expected = F.binary_cross_entropy_with_logits(logits, target) + 1 - dice.mean()
    assert loss(logits, t).item() == pytest.approx(expected.item(), rel=1e-5)


def test_region_loss_masks_the_ignore_label():
    regions = [(1, 2), (2,)]
    t = _labels()
    t[:, :, 4:] = 5
    logits = torch.randn(2, 2, 8, 8, 8, requires_grad=True)
    RegionDiceBCELoss(regions, False, ignore_label=5)(logits, t).backward()
    assert logits.grad[:, :, 4:].abs().max() == 0 and logits.grad[:, :, :4].abs().max() > 0


def test_deep_supervision_combines_outputs_with_downsampled_targets():
    base = DiceCELoss(3, batch_dice=False)
    t = _labels()
    full, half = torch.randn(2, 3, 8, 8, 8), torch.randn(2, 3, 4, 4, 4)
    expected = 2 / 3 * base(full, t) + 1 / 3 * base(half, t[:, :, ::2, ::2, ::2])
    assert DeepSupervisionLoss(base)([full, half], t).item() == pytest.approx(expected.item(), rel=1e-6)
    assert DeepSupervisionLoss(base)(full, t).item() == pytest.approx(base(full, t).item())


def test_downsample_labels_is_nearest_and_keeps_values():
    t = torch.arange(8).view(1, 1, 8, 1, 1).repeat(1, 1, 1, 2, 2)
    assert downsample_labels(t, (4, 1, 1)).flatten().tolist() == [0, 2, 4, 6]


def test_make_loss_chooses_softmax_or_regions():
    assert isinstance(make_loss(3, False).base, DiceCELoss)
    assert isinstance(make_loss(2, True, regions=[(1, 2), (2,)]).base, RegionDiceBCELoss)
    with pytest.raises(ValueError, match="regions"):
        make_loss(3, True, regions=[(1,)])
