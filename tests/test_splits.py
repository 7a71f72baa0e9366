"""autoseg's folds are nnU-Net v2's for the same case names."""

import pytest

from autoseg.splits import RULE_EARLIER, RULE_NNUNET, Splits, kfold_validation_indices, make_splits

# The expected folds below were computed once with nnU-Net v2.8.1 itself, in its own virtual environment
# (scikit-learn 1.9.1, numpy 2.4.6):
#   from nnunetv2.utilities.crossval_split import generate_crossval_split
#   generate_crossval_split(sorted(NAMES), seed=12345, n_splits=5)   # -> [{"train": [...], "val": [...]}, ...]
# and are data here (nnunetv2 and scikit-learn are not autoseg dependencies).
NAMES = [f"hippocampus_{i:03d}" for i in (1, 3, 4, 6, 7, 8, 10, 11, 14, 17, 19, 23, 24, 25, 26, 27, 29, 30, 31,
                                          32, 33)] + ["Case_B", "case_a", "liver_10", "liver_2", "liver_9"]
NNUNET_VAL = [
    ["hippocampus_003", "hippocampus_010", "hippocampus_023", "hippocampus_026", "hippocampus_031", "hippocampus_033"],
    ["hippocampus_014", "hippocampus_019", "hippocampus_025", "hippocampus_029", "hippocampus_030"],
    ["Case_B", "hippocampus_007", "hippocampus_008", "hippocampus_017", "hippocampus_032"],
    ["hippocampus_024", "hippocampus_027", "liver_10", "liver_2", "liver_9"],
    ["case_a", "hippocampus_001", "hippocampus_004", "hippocampus_006", "hippocampus_011"],
]
SEVEN = [f"c{i}" for i in range(7)]
NNUNET_VAL_SEVEN = [["c3", "c6"], ["c0", "c4"], ["c1"], ["c5"], ["c2"]]


@pytest.mark.parametrize("names, expected", [(NAMES, NNUNET_VAL), (SEVEN, NNUNET_VAL_SEVEN)])
def test_folds_equal_nnunet_generate_crossval_split(names, expected):
    splits = make_splits(list(reversed(names)))  # the input order does not matter: names are sorted first
    assert [list(f.val) for f in splits.folds] == expected
    for fold in splits.folds:
        assert list(fold.train) == sorted(set(names) - set(fold.val))
    assert splits.rule == RULE_NNUNET and splits.seed == 12345


def test_fold_sizes_follow_kfold():
    sizes = [len(v) for v in kfold_validation_indices(23)]
    assert sizes == [5, 5, 5, 4, 4]
    assert sorted(i for v in kfold_validation_indices(23) for i in v) == list(range(23))


def test_fewer_cases_than_folds_still_give_five_training_folds():
    splits = make_splits(["a", "b", "c"])
    assert len(splits.folds) == 5 and all(f.train and f.val for f in splits.folds)
    assert sorted(c for f in splits.folds[:3] for c in f.val) == ["a", "b", "c"]


def test_splits_json_without_rule_reads_as_the_earlier_rule(tmp_path):
    data = make_splits(NAMES).to_dict()
    del data["rule"]
    assert Splits.from_dict(data).rule == RULE_EARLIER
