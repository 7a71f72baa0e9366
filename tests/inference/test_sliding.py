import pytest
import torch
from torch import nn

from autoseg.inference.sliding import (GAUSSIAN_SIGMA_SCALE, importance_map, mirror_combinations, predict_logits,
                                      predict_probabilities)


def _pointwise(cin=1, k=3, dims=3, seed=0):
    torch.manual_seed(seed)
    return (nn.Conv3d if dims == 3 else nn.Conv2d)(cin, k, 1)


def test_mirror_combinations_cover_every_subset():
    assert mirror_combinations((0, 1, 2)) == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert mirror_combinations(()) == [()]


@pytest.mark.parametrize("shape", [(20, 18, 17), (10, 12, 9)])  # larger and smaller than the patch
def test_gaussian_weighted_windows_of_a_pointwise_net_reproduce_the_direct_prediction(shape):
    net = _pointwise()
    image = torch.randn(1, *shape)
    with torch.no_grad():
        direct = net(image[None])[0]
    out = predict_logits([net], image, (16, 16, 16), mirror_axes=())
    assert out.shape == (3, *shape)
    torch.testing.assert_close(out, direct, atol=1e-5, rtol=1e-5)


def test_mirroring_averages_predictions_of_flipped_inputs_flipped_back():
    torch.manual_seed(0)
    net = nn.Conv3d(1, 2, 3, padding=1)  # not flip-invariant
    image = torch.randn(1, 16, 16, 16)  # one window
    with torch.no_grad():
        a = net(image[None])[0]
        b = torch.flip(net(torch.flip(image[None], [3]))[0], [2])
    out = predict_logits([net], image, (16, 16, 16), mirror_axes=(1,))
    torch.testing.assert_close(out, (a + b) / 2, atol=1e-5, rtol=1e-5)


def test_networks_are_averaged():
    n1, n2 = _pointwise(seed=1), _pointwise(seed=2)
    image = torch.randn(1, 16, 16, 16)
    both = predict_logits([n1, n2], image, (16, 16, 16), mirror_axes=())
    single = [predict_logits([n], image, (16, 16, 16), mirror_axes=()) for n in (n1, n2)]
    torch.testing.assert_close(both, (single[0] + single[1]) / 2, atol=1e-5, rtol=1e-5)


def test_2d_networks_predict_slice_by_slice_along_axis_0():
    net = _pointwise(dims=2, k=2)
    image = torch.randn(1, 5, 20, 12)
    out = predict_logits([net], image, (16, 16), mirror_axes=(0, 1))
    with torch.no_grad():
        direct = torch.stack([net(image[None, :, x])[0] for x in range(5)], dim=1)
    assert out.shape == (2, 5, 20, 12)
    torch.testing.assert_close(out, direct, atol=1e-5, rtol=1e-5)


def test_probabilities_are_softmax_or_sigmoid():
    net = _pointwise()
    image = torch.randn(1, 16, 16, 16)
    p = predict_probabilities([net], image, (16, 16, 16), mirror_axes=())
    torch.testing.assert_close(p.sum(0), torch.ones(16, 16, 16))
    r = predict_probabilities([net], image, (16, 16, 16), regions=True, mirror_axes=())
    torch.testing.assert_close(r, torch.sigmoid(predict_logits([net], image, (16, 16, 16), mirror_axes=())))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="mirror_axes"):
        predict_logits([_pointwise()], torch.randn(1, 8, 8, 8), (8, 8, 8), mirror_axes=(3,))
    with pytest.raises(ValueError, match="at least one network"):
        predict_logits([], torch.randn(1, 8, 8, 8), (8, 8, 8))


@pytest.mark.parametrize("regions", [False, True])
def test_activation_in_tiny_slabs_is_in_place_and_equals_whole_tensor(regions):
    from autoseg.inference.sliding import logits_to_probabilities

    logits = torch.randn(3, 7, 5, 4) * 4
    expected = torch.sigmoid(logits) if regions else torch.softmax(logits, dim=0)
    out = logits_to_probabilities(logits, regions, slab_voxels=20)  # one row of axis 1 per slab
    assert out.data_ptr() == logits.data_ptr()  # no second (K, *S) tensor
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("shape", [(21, 18, 13), (7, 18, 13)])  # larger than the patch; one axis smaller
def test_preallocated_accumulation_equals_monai_sliding_window(shape):
    """Row-by-row normalisation without a whole-volume weight map gives MONAI's result exactly."""
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    net = nn.Conv3d(1, 3, 3, padding=1)  # neighbours matter: window borders and weights show
    image = torch.randn(1, *shape)
    out = predict_logits([net], image, (8, 10, 6), mirror_axes=())
    with torch.no_grad():
        ref = sliding_window_inference(image[None], (8, 10, 6), 1, net, overlap=0.5, mode="gaussian",
                                       sigma_scale=0.125, padding_mode="constant", cval=0.0)[0]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("patch", [(40, 56, 40), (16, 16, 16), (5, 7, 9), (128, 128), (3, 200, 1)])
def test_gaussian_window_is_monais_importance_map(patch):
    """The window weights built here equal MONAI's gaussian importance map (exactly, also where the
    Gaussian falls below MONAI's 1e-3 floor at the edges of long axes)."""
    from monai.data.utils import compute_importance_map

    ref = compute_importance_map(patch, mode="gaussian", sigma_scale=GAUSSIAN_SIGMA_SCALE, device="cpu")
    ours = importance_map(patch)
    assert ours.dtype == torch.float32 and ours.shape == ref.shape
    assert torch.equal(ours, ref.float())


def test_accumulation_is_float16_only_above_the_size_limit():
    from autoseg.inference.sliding import HALF_ACCUMULATION_BYTES, accumulation_dtype

    assert accumulation_dtype((3, 64, 64, 64)) == torch.float32
    assert accumulation_dtype((3, 900, 512, 512)) == torch.float16  # 2.8 GB as float32
    assert accumulation_dtype((1, HALF_ACCUMULATION_BYTES // 4)) == torch.float32  # at the limit
    assert accumulation_dtype((1, HALF_ACCUMULATION_BYTES // 4 + 1)) == torch.float16


@pytest.mark.parametrize("patch", [(8, 10, 6), (10, 6)])  # 3D windows; 2D slice by slice
def test_float16_accumulation_of_a_large_volume_matches_float32(monkeypatch, patch):
    """Above the limit the logits buffer is float16: same mean logits up to float16 rounding, same
    argmax except where two classes are within that rounding, activation stays in place."""
    from autoseg.inference import sliding

    torch.manual_seed(0)
    net = (nn.Conv3d if len(patch) == 3 else nn.Conv2d)(1, 3, 3, padding=1)
    image = torch.randn(1, 21, 18, 13)
    full = predict_logits([net], image, patch, mirror_axes=())
    monkeypatch.setattr(sliding, "HALF_ACCUMULATION_BYTES", 1000)  # every buffer counts as large
    half = predict_logits([net], image, patch, mirror_axes=())
    assert full.dtype == torch.float32 and half.dtype == torch.float16
    torch.testing.assert_close(half.float(), full, atol=5e-3, rtol=2e-3)
    top2 = full.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-2
    assert torch.equal(half.float().argmax(0)[clear], full.argmax(0)[clear])
    probs = sliding.logits_to_probabilities(half, regions=False, slab_voxels=50)
    assert probs.dtype == torch.float16 and probs.data_ptr() == half.data_ptr()
    torch.testing.assert_close(probs.float(), torch.softmax(full, 0), atol=2e-3, rtol=2e-3)
