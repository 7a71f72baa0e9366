"""Cross-validation splits (``splits.json``): seeded K folds over the sorted case identifiers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoseg.artifacts import Artifact

DEFAULT_FOLDS = 5
DEFAULT_SEED = 12345  # nnU-Net v2 uses KFold(5, shuffle=True, random_state=12345)


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

    def fold(self, k: int | str, all_cases: list[str] | None = None) -> Fold:
        """Fold ``k``; ``"all"`` trains on every case (validation on the same cases, as nnU-Net)."""
        if k == "all":
            cases = tuple(sorted(set(all_cases or []) | {c for f in self.folds for c in f.train + f.val}))
            return Fold(train=cases, val=cases)
        k = int(k)
        if not 0 <= k < len(self.folds):
            raise ValueError(f"fold {k} does not exist: splits.json has folds 0-{len(self.folds) - 1} (or 'all')")
        return self.folds[k]


def make_splits(case_ids: list[str], n_folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED) -> Splits:
    """Shuffle the sorted identifiers with ``seed`` and cut them into ``n_folds`` near-equal folds.

    With fewer cases than folds, each case is validation in at most one fold and the remaining folds
    validate on a seeded random case so that every fold still trains on something."""
    ids = sorted(case_ids)
    if len(ids) < 2:
        raise ValueError(f"need at least 2 labelled cases for cross-validation, got {len(ids)}")
    rng = np.random.default_rng(seed)
    order = [ids[i] for i in rng.permutation(len(ids))]
    chunks = [list(c) for c in np.array_split(np.array(order, dtype=object), min(n_folds, len(ids)))]
    while len(chunks) < n_folds:
        chunks.append([order[int(rng.integers(len(order)))]])
    folds = []
    for val in chunks:
        val_set = set(val)
        folds.append(Fold(train=tuple(sorted(c for c in ids if c not in val_set)), val=tuple(sorted(val))))
    return Splits(folds=tuple(folds), seed=seed)
