import pytest

from autoseg.planning.settings import PlannerSettings, PresetError, available_presets, load_preset


def test_defaults_are_nnunet_v2_values():
    s = PlannerSettings()
    assert (s.anisotropy_threshold, s.min_feature_map_edge, s.base_features) == (3.0, 4, 32)
    assert (s.max_features_3d, s.max_features_2d) == (320, 512)
    assert s.patch_volume(3) == 256 ** 3 and s.patch_volume(2) == 2048 ** 2
    assert (s.reference_estimate(3), s.reference_estimate(2)) == (560e6, 85e6)
    assert (s.reference_batch(3), s.reference_batch(2)) == (2, 12)
    assert (s.max_dataset_coverage, s.min_batch_size, s.lowres_threshold) == (0.05, 2, 0.25)
    assert (s.lowres_spacing_step, s.lowres_min_voxel_ratio, s.mask_for_norm_threshold) == (1.03, 2.0, 0.75)


def test_default_preset_file_restates_the_defaults():
    assert load_preset("default") == PlannerSettings(preset="default")


@pytest.mark.parametrize("name, gb, ref3, ref2", [
    ("resenc_m", 8, 680e6, 135e6), ("resenc_l", 24, 2.1e9, 380e6), ("resenc_xl", 40, 3.6e9, 560e6)])
def test_resenc_presets(name, gb, ref3, ref2):
    s = load_preset(name)
    assert s.preset == name and s.architecture == "resenc_unet"
    assert s.gpu_memory_gb == gb and s.reference_estimate(3) == ref3 and s.reference_estimate(2) == ref2
    assert s.max_dataset_coverage == 1.0
    assert s.encoder_blocks(8) == (1, 3, 4, 6, 6, 6, 6, 6)
    assert s.decoder_blocks(8) == (1,) * 7


def test_swin_preset():
    s = load_preset("swin_unetr")
    assert s.architecture == "swin_unetr" and s.patch_divisible_by == 32 and s.base_features in (24, 48)


def test_all_shipped_presets_load():
    assert {"default", "resenc_m", "resenc_l", "resenc_xl", "swin_unetr"} <= set(available_presets())
    for name in available_presets():
        assert load_preset(name).preset == name


def test_preset_by_path_and_budget_scaling(tmp_path):
    p = tmp_path / "big.toml"
    p.write_text("gpu_memory_gb = 16\nmax_dataset_coverage = 1\n")
    s = load_preset(p)
    assert s.preset == "big" and s.max_dataset_coverage == 1.0
    assert s.reference_estimate(3) == 2 * 560e6


def test_unknown_key_lists_valid_keys(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("gpu_memory = 16\n")
    with pytest.raises(PresetError, match=r"bad.toml: unknown key\(s\) gpu_memory; valid keys: .*gpu_memory_gb"):
        load_preset(p)


def test_wrong_type_and_bad_value(tmp_path):
    p = tmp_path / "t.toml"
    p.write_text('min_batch_size = "two"\n')
    with pytest.raises(PresetError, match="min_batch_size"):
        load_preset(p)
    p.write_text('architecture = ""\n')
    with pytest.raises(PresetError, match="architecture must name"):
        load_preset(p)


def test_unknown_preset_name_lists_choices():
    with pytest.raises(PresetError, match="choices: .*resenc_l"):
        load_preset("resenc_xxl")


def test_replace_validates_keys():
    s = load_preset("resenc_l").replace(gpu_memory_gb=48)
    assert s.reference_estimate(3) == 2 * 2.1e9
    with pytest.raises(PresetError, match="unknown key"):
        s.replace(vram=1)
