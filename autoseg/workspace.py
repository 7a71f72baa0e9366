"""The workspace folder: ``raw/``, ``preprocessed/`` and ``results/`` under one root.

The CLI resolves the root once (``--workdir``, else ``AUTOSEG_HOME``, else ``./autoseg_work``) and
passes a :class:`Workspace` down; nothing below the CLI reads environment variables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_DATASET_RE = re.compile(r"^Dataset(\d+)_.+$")


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
class Workspace:
    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def preprocessed_dir(self, dataset_name: str) -> Path:
        return self.preprocessed / folder_name(dataset_name, "dataset name")

    def results_dir(self, dataset_name: str) -> Path:
        return self.results / folder_name(dataset_name, "dataset name")

    def resolve_raw(self, dataset: str | Path) -> Path:
        """A raw dataset folder from a path, a folder name under ``raw/`` or a dataset number."""
        p = Path(dataset)
        if p.is_dir() and (p / "dataset.json").exists():
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
        from autoseg.planning.plans import planned as plans_of

        planned = [n for n in self._names(self.preprocessed) if plans_of(self.preprocessed / n)]
        if dataset is None:
            if len(planned) == 1:
                return planned[0]
            if not planned:
                raise WorkspaceError(f"no planned dataset in {self.preprocessed}; run `autoseg plan DATASET` first")
            raise WorkspaceError("several planned datasets, name one: " + ", ".join(planned))
        name = Path(dataset).name if Path(dataset).is_dir() else self._match_name(str(dataset), self.preprocessed)
        if name is None or name not in planned:
            raise WorkspaceError(
                f"dataset '{dataset}' has no plans in {self.preprocessed}; run `autoseg plan {dataset}` first"
                + (f" (planned: {', '.join(planned)})" if planned else ""))
        return name

    @staticmethod
    def _names(folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def _match_name(self, text: str, folder: Path) -> str | None:
        names = self._names(folder)
        if text in names:
            return text
        return next((n for n in names if names_dataset(text, n)), None)
