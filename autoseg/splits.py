"""Cross-validation splits (``splits.json``): nnU-Net v2's five folds over the sorted case identifiers.

nnU-Net v2 (``nnunetv2/utilities/crossval_split.py``, ``generate_crossval_split``) splits the sorted
case identifiers with scikit-learn's ``KFold(n_splits=5, shuffle=True, random_state=12345)``. That is:
the indices ``0..n-1`` are shuffled in place by a legacy ``numpy.random.RandomState(12345)`` and cut,
in that shuffled order, into folds of ``n // 5`` cases, the first ``n % 5`` folds one case larger
(scikit-learn ``KFold._iter_test_indices``). :func:`kfold_validation_indices` does the same with
numpy alone; ``RandomState``'s stream is frozen by numpy's compatibility policy (NEP 19), so the
folds are nnU-Net's for the same case names, without a scikit-learn dependency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoseg.artifacts import Artifact

DEFAULT_FOLDS = 5  # nnU-Net v2: KFold(n_splits=5, ...)
DEFAULT_SEED = 12345  # nnU-Net v2: KFold(..., shuffle=True, random_state=12345)
RULE_NNUNET = "nnunet-kfold"  # folds of make_splits: scikit-learn KFold's rule, as nnU-Net v2
RULE_EARLIER = "autoseg-default_rng"  # splits.json written before autoseg used nnU-Net's rule (no "rule" key)
RULE_USER = "user"  # copied from a user's splits.json / splits_final.json


@dataclass(frozen=True)
class Fold:
    train: tuple[str, ...]
    val: tuple[str, ...]


@dataclass(frozen=True)
class Splits(Artifact):
    KIND = "splits"
    SCHEMA_VERSION = 1

    folds: tuple[Fold, ...]
    seed: int
    user_provided: bool = False
    rule: str = RULE_EARLIER  # files written before this key existed were made with numpy's default_rng

    def fold(self, k: int | str, all_cases: list[str] | None = None) -> Fold:
        """Fold ``k``; ``"all"`` trains on every case (validation on the same cases, as nnU-Net)."""
        if k == "all":
            cases = tuple(sorted(set(all_cases or []) | {c for f in self.folds for c in f.train + f.val}))
            return Fold(train=cases, val=cases)
        k = int(k)
        if not 0 <= k < len(self.folds):
            raise ValueError(f"fold {k} does not exist: splits.json has folds 0-{len(self.folds) - 1} (or 'all')")
        return self.folds[k]

    def case_ids(self) -> set[str]:
        """Every case named in some fold."""
        return {c for f in self.folds for c in f.train + f.val}


def kfold_validation_indices(n: int, n_folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED) -> list[np.ndarray]:
    """Validation indices of each fold, as scikit-learn ``KFold(n_folds, shuffle=True, random_state=seed)``
    gives them for ``n`` samples (each sorted ascending, as ``KFold.split`` returns them).

    Needs ``n >= n_folds`` (KFold refuses fewer samples than folds)."""
    if not 2 <= n_folds <= n:
        raise ValueError(f"{n_folds} folds need at least {n_folds} cases (and 2 folds), got {n}")
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    sizes = [n // n_folds + (1 if k < n % n_folds else 0) for k in range(n_folds)]
    bounds = np.cumsum([0] + sizes)
    return [np.sort(order[bounds[k]:bounds[k + 1]]) for k in range(n_folds)]


def make_splits(case_ids: list[str], n_folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED) -> Splits:
    """nnU-Net v2's folds of the sorted identifiers (:func:`kfold_validation_indices`).

    With fewer cases than folds (nnU-Net refuses), each case is validation in one fold, in the
    shuffled order, and the remaining folds validate on a case drawn from the same random stream, so
    that every fold still trains on something."""
    ids = sorted(case_ids)
    if len(ids) < 2:
        raise ValueError(f"need at least 2 labelled cases for cross-validation, got {len(ids)}")
    if len(ids) >= n_folds:
        chunks = [[ids[i] for i in idx] for idx in kfold_validation_indices(len(ids), n_folds, seed)]
    else:
        rng = np.random.RandomState(seed)
        order = np.arange(len(ids))
        rng.shuffle(order)
        chunks = [[ids[i]] for i in order]
        chunks += [[ids[int(rng.randint(len(ids)))]] for _ in range(n_folds - len(ids))]
    folds = []
    for val in chunks:
        val_set = set(val)
        folds.append(Fold(train=tuple(c for c in ids if c not in val_set), val=tuple(sorted(val))))
    return Splits(folds=tuple(folds), seed=seed, rule=RULE_NNUNET)
