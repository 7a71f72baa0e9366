"""The workspace folder and its layout: the one place that knows where things lie.

::

    <workdir>/raw/<Dataset>/                                  raw dataset (dataset.json, imagesTr, labelsTr)
    <workdir>/preprocessed/<Dataset>/
        fingerprint.json, source.json, splits.json, dataset.json
        plans.json | plans_<preset>.json                       plans of each planner preset
        <plans_name>_<data_identifier>/                       preprocessed cases of a configuration
    <workdir>/results/<Dataset>/
        <arch>__<plans_name>__<config>/                       model folder
            fold_<k>/ (or fold_all/)                           run folder of one fold
            predicted_next_stage/<next_config>/<case>.npy      a low-res model's cross-validation
                                                              segmentations for the cascade stage

The CLI resolves the root once (``--workdir``, else ``AUTOSEG_HOME``, else ``./autoseg_work``) and
passes a :class:`Workspace` down; nothing below the CLI reads environment variables, and no other
module spells out these paths: it asks the workspace (or, for a folder outside one, the functions
below that take a dataset or model folder).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from autoseg.artifacts import Artifact
from autoseg.core.checkpoint import CHECKPOINTS  # the file names a finished fold leaves; core owns the format
from autoseg.planning.plans import DEFAULT_PLANS_NAME, Plans, matches_plans

_DATASET_RE = re.compile(r"^Dataset(\d+)_.+$")
_FOLD_RE = re.compile(r"^fold_(\d+|all)$")
PLANS_FILE = "plans.json"  # the default preset's plans; preset P's are plans_P.json
SOURCE_FILE, SPLITS_FILE, FINGERPRINT_FILE = "source.json", "splits.json", "fingerprint.json"
DATASET_FILE = "dataset.json"
NEXT_STAGE_FOLDER = "predicted_next_stage"  # nnU-Net v2's name (nnUNetTrainer.perform_actual_validation)

Fold = int | str  # 0, 1, ... or "all"


def names_dataset(text: str | Path, name: str) -> bool:
    """Whether ``text`` (a dataset name, its number or a folder path) refers to dataset ``name``."""
    text = Path(text).name if Path(text).is_dir() else str(text)
    if text == name:
        return True
    m = _DATASET_RE.match(name)
    return bool(text.isdigit() and m and int(m.group(1)) == int(text))


class WorkspaceError(ValueError):
    pass


def folder_name(name: str, what: str = "name") -> str:
    """``name`` when it can be one folder inside another; raises :class:`WorkspaceError` for an empty
    name, ``.``/``..``, a path separator (``/``, ``\\``) or a control character, any of which would
    put what is written outside the folder it is meant for (``--name ../x``)."""
    bad = (not name or name in (".", "..") or any(sep in name for sep in ("/", "\\"))
           or any(not ch.isprintable() for ch in name))
    if bad:
        raise WorkspaceError(f"{what} {name!r} is not a plain folder name (no '/', '\\', '..' or control "
                             "characters); choose a name like Dataset999_Mine")
    return name


@dataclass(frozen=True)
class DatasetSource(Artifact):
    """``source.json``: the raw dataset folder a preprocessed dataset was made from, and a
    signature of its files (names, sizes, modification times) to notice when they change."""

    KIND = "source"
    SCHEMA_VERSION = 1

    raw_dir: str
    signature: str


# --- inside a preprocessed dataset folder -----------------------------------------------------------

def plans_path(dataset_dir: Path, plans_name: str) -> Path:
    """Where the plans named ``plans_name`` lie in a preprocessed dataset folder."""
    if plans_name == DEFAULT_PLANS_NAME:
        return Path(dataset_dir) / PLANS_FILE
    return Path(dataset_dir) / f"plans_{plans_name.removeprefix(DEFAULT_PLANS_NAME + '_')}.json"


def planned(dataset_dir: Path) -> dict[str, Path]:
    """The plans of a preprocessed dataset folder: ``{plans name: file}``, the default plans first."""
    folder = Path(dataset_dir)
    found = {}
    if (folder / PLANS_FILE).is_file():
        found[DEFAULT_PLANS_NAME] = folder / PLANS_FILE
    for p in sorted(folder.glob("plans_*.json")) if folder.is_dir() else []:
        if p.is_file():
            found[f"{DEFAULT_PLANS_NAME}_{p.stem.removeprefix('plans_')}"] = p
    return found


def find_plans(dataset_dir: Path, wanted: str | None = None) -> Path:
    """The plans file to use: the one ``wanted`` names (see :func:`~autoseg.planning.plans.matches_plans`);
    without a name the default plans, or the only plans there. Errors list the plans that exist."""
    found = planned(dataset_dir)
    listed = ", ".join(found) or "none"
    if wanted is None:
        if DEFAULT_PLANS_NAME in found:
            return found[DEFAULT_PLANS_NAME]
        if len(found) == 1:
            return next(iter(found.values()))
        if not found:
            raise FileNotFoundError(f"{dataset_dir}: no plans; run `autoseg plan` first")
        raise ValueError(f"{dataset_dir}: several plans ({listed}); choose one with --plans")
    for name, path in found.items():
        if matches_plans(name, wanted):
            return path
    preset = wanted.removeprefix(DEFAULT_PLANS_NAME + "_")
    raise ValueError(f"{dataset_dir}: no plans named '{wanted}' (planned: {listed}); plan them with "
                     f"`autoseg plan DATASET --planner {preset}`")


def cases_folder(dataset_dir: Path, plans_name: str, data_identifier: str) -> Path:
    """Folder of preprocessed cases: ``<plans_name>_<data_identifier>`` (configurations with the same
    data identifier share it)."""
    return Path(dataset_dir) / f"{plans_name}_{data_identifier}"


def data_folder(dataset_dir: Path, plans: Plans, config_name: str) -> Path:
    """Folder holding the preprocessed cases of ``config_name`` in a preprocessed dataset folder."""
    return cases_folder(dataset_dir, plans.plans_name, plans.configuration(config_name).data_identifier)


# --- model folders ----------------------------------------------------------------------------------

def model_folder_name(arch: str, plans_name: str, config: str) -> str:
    return f"{arch}__{plans_name}__{config}"


def fold_folder_name(fold: Fold) -> str:
    return f"fold_{fold}"


def fold_of(folder: Path) -> Fold | None:
    """The fold a ``fold_<k>`` / ``fold_all`` folder holds; None for any other folder."""
    m = _FOLD_RE.match(Path(folder).name)
    if m is None:
        return None
    return "all" if m.group(1) == "all" else int(m.group(1))


def fold_dirs(model_dir: Path) -> dict[Fold, Path]:
    """The ``fold_*`` folders of a model folder, by fold (numbers first, in order, then ``all``)."""
    found: dict[Fold, Path] = {}
    if Path(model_dir).is_dir():
        for p in Path(model_dir).iterdir():
            fold = fold_of(p)
            if fold is not None and p.is_dir():
                found[fold] = p
    return dict(sorted(found.items(), key=lambda kv: (kv[0] == "all", kv[0] if kv[0] != "all" else 0)))


def next_stage_folder(model_dir: Path, next_config: str) -> Path:
    """Where the folds of the model in ``model_dir`` (a ``3d_lowres`` stage) leave their validation
    cases' segmentations for the cascade configuration ``next_config``:
    ``<model_dir>/predicted_next_stage/<next_config>/`` (one folder for every fold, as in nnU-Net v2)."""
    return Path(model_dir) / NEXT_STAGE_FOLDER / folder_name(next_config, "configuration name")


@dataclass(frozen=True)
class ModelFolder:
    """A trained configuration folder ``<arch>__<plans_name>__<config>`` and its parts."""

    path: Path
    arch: str
    plans_name: str
    config: str

    @property
    def name(self) -> str:
        return self.path.name


def model_folders(results_dir: Path) -> list[ModelFolder]:
    """Configuration folders under ``results/<Dataset>`` with at least one fold checkpoint."""
    out = []
    if Path(results_dir).is_dir():
        for p in sorted(Path(results_dir).iterdir()):
            parts = p.name.split("__")
            if len(parts) != 3 or not p.is_dir():
                continue
            if any((d / n).is_file() for d in fold_dirs(p).values() for n in CHECKPOINTS.values()):
                out.append(ModelFolder(p, *parts))
    return out


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def holding_model(cls, model_dir: Path) -> tuple[Workspace, str] | None:
        """The workspace and dataset name of a model folder at ``<workdir>/results/<Dataset>/<model>``,
        judged by its place alone; None for a folder that cannot be one (too near the file system root)."""
        model_dir = Path(model_dir)
        if len(model_dir.parents) <= 2:
            return None
        return cls(model_dir.parents[2]), model_dir.parent.name

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "results"

    # --- a dataset's folders and files

    def preprocessed_dir(self, dataset_name: str) -> Path:
        return self.preprocessed / folder_name(dataset_name, "dataset name")

    def results_dir(self, dataset_name: str) -> Path:
        return self.results / folder_name(dataset_name, "dataset name")

    def source_file(self, dataset_name: str) -> Path:
        return self.preprocessed_dir(dataset_name) / SOURCE_FILE

    def fingerprint_file(self, dataset_name: str) -> Path:
        return self.preprocessed_dir(dataset_name) / FINGERPRINT_FILE

    def splits_file(self, dataset_name: str) -> Path:
        return self.preprocessed_dir(dataset_name) / SPLITS_FILE

    def dataset_json(self, dataset_name: str) -> Path:
        """The copy of the raw dataset.json that ``plan`` keeps with the preprocessed data."""
        return self.preprocessed_dir(dataset_name) / DATASET_FILE

    def plans_file(self, dataset_name: str, plans_name: str) -> Path:
        """``plans.json`` for the default preset's plans, ``plans_<preset>.json`` for the others."""
        return plans_path(self.preprocessed_dir(dataset_name), plans_name)

    def find_plans(self, dataset_name: str, wanted: str | None = None) -> Path:
        """The plans file of a dataset that ``wanted`` names (see :func:`find_plans`)."""
        return find_plans(self.preprocessed_dir(dataset_name), wanted)

    def data_dir(self, dataset_name: str, plans: Plans, config_name: str) -> Path:
        """The preprocessed cases of one configuration of ``plans``."""
        return data_folder(self.preprocessed_dir(dataset_name), plans, config_name)

    def model_dir(self, dataset_name: str, arch: str, plans_name: str, config: str) -> Path:
        return self.results_dir(dataset_name) / model_folder_name(arch, plans_name, config)

    def run_dir(self, dataset_name: str, arch: str, plans_name: str, config: str, fold: Fold) -> Path:
        """The run folder of one fold: ``results/<Dataset>/<arch>__<plans_name>__<config>/fold_<k>``."""
        return self.model_dir(dataset_name, arch, plans_name, config) / fold_folder_name(fold)

    def next_stage_dir(self, dataset_name: str, arch: str, plans_name: str, config: str, next_config: str) -> Path:
        """The previous-stage segmentations that model ``config`` (the low-res stage) leaves for the cascade
        configuration ``next_config`` (:func:`next_stage_folder`)."""
        return next_stage_folder(self.model_dir(dataset_name, arch, plans_name, config), next_config)

    def model_folders(self, dataset_name: str) -> list[ModelFolder]:
        """The dataset's model folders with at least one finished fold checkpoint."""
        return model_folders(self.results_dir(dataset_name))

    def trained_datasets(self) -> list[str]:
        """Datasets under ``results/`` with at least one model folder."""
        return [n for n in self._names(self.results) if model_folders(self.results / n)]

    def raw_dir(self, dataset_name: str) -> Path:
        """The raw folder of a planned dataset: from its ``source.json``, else ``<workdir>/raw/<name>``."""
        source = self.source_file(dataset_name)
        if source.is_file():
            raw = Path(DatasetSource.load(source).raw_dir)
            if raw.is_dir():
                return raw
            raise WorkspaceError(f"{source}: the raw dataset {raw} it points to is gone; restore it or rerun "
                                 f"`autoseg plan` on the dataset's new location")
        raw = self.raw / dataset_name
        if raw.is_dir():
            return raw
        raise WorkspaceError(f"raw data of {dataset_name} not found ({source} missing and no {raw}); "
                             f"rerun `autoseg plan` on the raw dataset")

    # --- names given on the command line

    def resolve_raw(self, dataset: str | Path) -> Path:
        """A raw dataset folder from a path, a folder name under ``raw/`` or a dataset number."""
        p = Path(dataset)
        if p.is_dir() and (p / DATASET_FILE).exists():
            return p.resolve()
        name = self._match_name(str(dataset), self.raw)
        if name is None:
            if p.is_dir():
                return p.resolve()
            known = self._names(self.raw)
            raise WorkspaceError(
                f"dataset '{dataset}' not found: it is neither a folder nor a dataset under {self.raw}"
                + (f" (there: {', '.join(known)})" if known else " (that folder holds no dataset)"))
        return self.raw / name

    def resolve_planned(self, dataset: str | Path | None) -> str:
        """The name of a planned dataset (one with plans under ``preprocessed/``: ``plans.json`` or a
        preset's ``plans_<preset>.json``).

        ``None`` picks the only planned dataset; with none or several, the error lists what exists.
        """
        names = [n for n in self._names(self.preprocessed) if planned(self.preprocessed / n)]
        if dataset is None:
            if len(names) == 1:
                return names[0]
            if not names:
                raise WorkspaceError(f"no planned dataset in {self.preprocessed}; run `autoseg plan DATASET` first")
            raise WorkspaceError("several planned datasets, name one: " + ", ".join(names))
        name = Path(dataset).name if Path(dataset).is_dir() else self._match_name(str(dataset), self.preprocessed)
        if name is None or name not in names:
            raise WorkspaceError(
                f"dataset '{dataset}' has no plans in {self.preprocessed}; run `autoseg plan {dataset}` first"
                + (f" (planned: {', '.join(names)})" if names else ""))
        return name

    @staticmethod
    def _names(folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def _match_name(self, text: str, folder: Path) -> str | None:
        names = self._names(folder)
        if text in names:
            return text
        return next((n for n in names if names_dataset(text, n)), None)
