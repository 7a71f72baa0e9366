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

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg import jsonfiles
from autoseg.artifacts import Artifact, ArtifactError

DEFAULT_FOLDS = 5  # nnU-Net v2: KFold(n_splits=5, ...)
DEFAULT_SEED = 12345  # nnU-Net v2: KFold(..., shuffle=True, random_state=12345)
RULE_NNUNET = "nnunet-kfold"  # folds of make_splits: scikit-learn KFold's rule, as nnU-Net v2
RULE_EARLIER = "autoseg-default_rng"  # splits.json written before autoseg used nnU-Net's rule (no "rule" key)
RULE_USER = "user"  # copied from a user's splits.json / splits_final.json
USER_SPLITS_NAMES = ("splits.json", "splits_final.json")  # looked up in the raw dataset folder
NNUNET_SPLITS_NAME = "splits_final.json"  # nnU-Net's folds, looked up next to the dataset's splits.json


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


def _parse_user_splits(path: Path) -> Splits:
    """Our splits artifact, or nnU-Net's ``splits_final.json`` (a list of {"train", "val"})."""
    try:
        data = jsonfiles.loads(path.read_text(encoding="utf-8-sig"), path)  # a byte-order mark is accepted
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: cannot be read as JSON ({e}); fix or remove it") from None
    if isinstance(data, list):
        try:
            folds = tuple(Fold(train=tuple(f["train"]), val=tuple(f["val"])) for f in data)
        except (TypeError, KeyError):
            raise ArtifactError(f"{path}: expected a list of {{\"train\": [...], \"val\": [...]}} folds") from None
        return Splits(folds=folds, seed=-1, user_provided=True, rule=RULE_USER)
    splits = Splits.from_dict(data, source=str(path))
    return Splits(folds=splits.folds, seed=splits.seed, user_provided=True, rule=RULE_USER)


def _validate_splits(splits: Splits, case_ids: list[str], source: Path) -> None:
    known = set(case_ids)
    unknown = sorted({c for f in splits.folds for c in f.train + f.val} - known)
    if not splits.folds:
        raise ArtifactError(f"{source}: holds no folds; add folds or delete it to get 5 automatic folds")
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise ArtifactError(f"{source}: names {len(unknown)} case(s) that are not training cases of the dataset "
                            f"({shown}); fix the file or delete it to get automatic folds")
    for k, f in enumerate(splits.folds):
        if not f.train or not f.val:
            raise ArtifactError(f"{source}: fold {k} has an empty train or val list; fix the file")


def resolve_splits(raw_dir: Path, existing: Path, case_ids: list[str]) -> Splits:
    """The folds to use, first found of: the user's ``splits.json`` / ``splits_final.json`` in the raw
    folder, nnU-Net's ``splits_final.json`` next to ``existing`` (the dataset's splits.json), the
    splits in ``existing`` (user-provided, or automatic over the same cases: runs already trained on
    it keep their folds), else nnU-Net's five folds (:func:`make_splits`)."""
    existing = Path(existing)
    user_files = [Path(raw_dir) / name for name in USER_SPLITS_NAMES] + [existing.parent / NNUNET_SPLITS_NAME]
    for path in user_files:
        if path.is_file():
            splits = _parse_user_splits(path)
            _validate_splits(splits, case_ids, path)
            return splits
    if existing.is_file():
        try:
            old = Splits.load(existing)
        except ArtifactError:
            old = None
        if old is not None and old.user_provided:
            _validate_splits(old, case_ids, existing)
            return old
        if old is not None and old.folds and old.case_ids() == set(case_ids):
            return old
    return make_splits(case_ids)
