import pytest

from autoseg.planning.topology import estimate_feature_map_size, network_topology, pad_to_multiple, stage_features


def test_isotropic_hippocampus_topology():
    # nnU-Net v2 plans Hippocampus 3d_fullres (median 35x50x35, 1 mm) with 3 pools and patch 40x56x40
    t = network_topology((1.0, 1.0, 1.0), (35, 50, 35))
    assert t.num_pools == (3, 3, 3)
    assert t.patch_size == (40, 56, 40)
    assert t.strides == ((1, 1, 1),) + ((2, 2, 2),) * 3
    assert t.kernel_sizes == ((3, 3, 3),) * 4
    assert t.divisible_by == (8, 8, 8)


def test_anisotropic_topology_uses_in_plane_kernels_first():
    # thick axis first: 5 mm vs 0.8 mm in-plane (nnU-Net v2 plans this 20x224x224 patch the same way)
    t = network_topology((5.0, 0.8, 0.8), (20, 224, 224))
    assert t.strides == ((1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
    assert t.kernel_sizes[:2] == ((1, 3, 3), (1, 3, 3))
    assert t.kernel_sizes[2:] == ((3, 3, 3),) * 4
    assert t.num_pools == (2, 5, 5)
    assert t.patch_size == (20, 224, 224)


def test_a_lone_poolable_axis_needs_three_times_the_min_edge():
    assert network_topology((1.0, 1.0), (11, 4)).num_pools == (0, 0)
    assert network_topology((1.0, 1.0), (12, 4)).num_pools == (1, 0)


def test_fractional_median_is_padded_up():
    assert network_topology((1.0, 1.0, 1.0), (35.5, 50, 35)).patch_size == (40, 56, 40)
    assert pad_to_multiple(40, 8) == 40 and pad_to_multiple(40.5, 8) == 48


def test_extra_divisor_applies_on_top_of_pools():
    t = network_topology((1.0, 1.0, 1.0), (35, 50, 35), extra_divisor=32)
    assert t.divisible_by == (32, 32, 32) and t.patch_size == (64, 64, 64)


def test_stage_features_are_capped():
    assert stage_features(7, 32, 320) == (32, 64, 128, 256, 320, 320, 320)
    assert stage_features(8, 32, 512)[-1] == 512


def test_estimate_by_hand():
    # stage sizes: 8x8 = 64 and 4x4 = 16; features 4 and 8
    args = dict(patch_size=(8, 8), strides=((1, 1), (2, 2)), features=(4, 8), n_classes=3,
                encoder_blocks=(2, 2), decoder_blocks=(2,))
    # encoder 2*4*64 + 2*8*16, decoder (2+1)*4*64, segmentation 3*64
    assert estimate_feature_map_size(**args) == 512 + 256 + 768 + 192
    # residual: stem 4*64, stage 0 two convs per block (no projection), stage 1 two convs + projection
    assert estimate_feature_map_size(**args, residual=True) == 256 + 2 * 2 * 4 * 64 + (2 * 2 + 1) * 8 * 16 + 768 + 192


@pytest.mark.parametrize("residual, expected", [(False, 452796416), (True, 557420544)])
def test_estimate_matches_nnunet_reference_network(residual, expected):
    # values of dynamic_network_architectures' compute_conv_feature_map_size for the nnU-Net 128^3,
    # 6-stage, 3-class networks (PlainConvUNet 2 convs/stage; ResidualEncoderUNet 1,3,4,6,6,6 blocks)
    t = network_topology((1.0, 1.0, 1.0), (128, 128, 128))
    enc = (1, 3, 4, 6, 6, 6) if residual else (2,) * 6
    dec = (1,) * 5 if residual else (2,) * 5
    est = estimate_feature_map_size(t.patch_size, t.strides, stage_features(6, 32, 320), 3, enc, dec, residual)
    assert est == expected


def test_estimate_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="per stage"):
        estimate_feature_map_size((8, 8), ((1, 1), (2, 2)), (4,), 3, (2, 2), (2,))
