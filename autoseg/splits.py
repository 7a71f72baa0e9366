"""Cross-validation splits (``splits.json``): seeded K folds over the sorted case identifiers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.artifacts import Artifact, ArtifactError

DEFAULT_FOLDS = 5
DEFAULT_SEED = 12345  # nnU-Net v2 uses KFold(5, shuffle=True, random_state=12345)
USER_SPLITS_NAMES = ("splits.json", "splits_final.json")  # looked up in the raw dataset folder


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


def _parse_user_splits(path: Path) -> Splits:
    """Our splits artifact, or nnU-Net's ``splits_final.json`` (a list of {"train", "val"})."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: cannot be read as JSON ({e}); fix or remove it") from None
    if isinstance(data, list):
        try:
            folds = tuple(Fold(train=tuple(f["train"]), val=tuple(f["val"])) for f in data)
        except (TypeError, KeyError):
            raise ArtifactError(f"{path}: expected a list of {{\"train\": [...], \"val\": [...]}} folds") from None
        return Splits(folds=folds, seed=-1, user_provided=True)
    splits = Splits.from_dict(data, source=str(path))
    return Splits(folds=splits.folds, seed=splits.seed, user_provided=True)


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
    """User splits from the raw folder, else the user-provided splits in ``existing`` (the dataset's
    splits.json, when it is one), else 5 seeded folds."""
    for name in USER_SPLITS_NAMES:
        path = Path(raw_dir) / name
        if path.is_file():
            splits = _parse_user_splits(path)
            _validate_splits(splits, case_ids, path)
            return splits
    existing = Path(existing)
    if existing.is_file():
        try:
            old = Splits.load(existing)
        except ArtifactError:
            old = None
        if old is not None and old.user_provided:
            _validate_splits(old, case_ids, existing)
            return old
    return make_splits(case_ids)
