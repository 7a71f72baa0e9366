"""The raw dataset: ``dataset.json`` schema and case discovery (nnU-Net v2 raw layout).

Layout::

    DatasetXXX_Name/
      dataset.json                   channel_names, labels, numTraining, file_ending, ...
      imagesTr/{case}_{XXXX}{ending}  one file per channel (XXXX = 0000, 0001, ...)
      labelsTr/{case}{ending}
      imagesTs/{case}_{XXXX}{ending}  optional

Integrity checks of the voxels live in :mod:`autoseg.integrity`; this module only parses and lists.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoseg import jsonfiles
from autoseg.io import SUPPORTED_ENDINGS, file_ending

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class DatasetError(ValueError):
    """One or more problems with a raw dataset; ``problems`` lists every one of them."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} found in the dataset:"
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in self.problems))


def read_json(path: Path) -> Any:
    """The JSON in ``path`` (a dataset.json); a UTF-8 byte-order mark, as some Windows editors write,
    is accepted. Raises :class:`DatasetError` naming the file and the fix."""
    try:
        return jsonfiles.loads(Path(path).read_text(encoding="utf-8-sig"), path)
    except UnicodeDecodeError as e:
        raise DatasetError([f"{path}: not UTF-8 text ({e}); save it as UTF-8"]) from None
    except json.JSONDecodeError as e:
        raise DatasetError([f"{path}: not valid JSON ({e}); fix the syntax"]) from None


@dataclass(frozen=True)
class DatasetSpec:
    """Parsed ``dataset.json``.

    ``labels`` maps a name to an integer class value, or to a list of values for a region (then
    ``regions_class_order`` gives the value each region is painted with when converting back).
    ``ignore_label`` is the value of the label named "ignore", when present.
    """

    name: str
    channel_names: tuple[str, ...]
    labels: dict[str, Any]
    num_training: int
    file_ending: str
    regions_class_order: tuple[int, ...] | None = None
    ignore_label: int | None = None
    force_itk: bool = False

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def has_regions(self) -> bool:
        return any(isinstance(v, (list, tuple)) for v in self.labels.values())

    @property
    def label_values(self) -> list[int]:
        """All integer values that may appear in a label file (background, classes, ignore)."""
        values: set[int] = set()
        for v in self.labels.values():
            values.update(v if isinstance(v, (list, tuple)) else [v])
        return sorted(values)

    @property
    def foreground_classes(self) -> list[int]:
        """Class values the network predicts, background and ignore excluded (integer labels only)."""
        return [v for k, v in self.labels.items()
                if not isinstance(v, (list, tuple)) and v != 0 and k != "ignore"]

    @property
    def regions(self) -> list[tuple[int, ...]]:
        """Each non-background region as the tuple of label values it covers (regions datasets)."""
        out = []
        for name, v in self.labels.items():
            if name in ("background", "ignore"):
                continue
            out.append(tuple(v) if isinstance(v, (list, tuple)) else (v,))
        return out

    @property
    def num_outputs(self) -> int:
        """Network output channels: classes incl. background (softmax), or regions (sigmoid)."""
        return len(self.regions) if self.has_regions else len(self.foreground_classes) + 1

    @classmethod
    def load(cls, root: Path) -> "DatasetSpec":
        root = Path(root)
        path = root / "dataset.json"
        if not root.is_dir():
            raise DatasetError([f"{root}: dataset folder not found"])
        if not path.is_file():
            raise DatasetError([f"{path}: missing; every dataset needs a dataset.json (see data_templates/)"])
        return cls.from_json(read_json(path), path, root.name)

    @classmethod
    def from_json(cls, data: Any, path: Path, name: str) -> "DatasetSpec":
        problems: list[str] = []
        if not isinstance(data, dict):
            raise DatasetError([f"{path}: must hold a JSON object"])
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            problems.append(f"{path}: missing required key(s) {', '.join(missing)}; see data_templates/")
        channels = _parse_channels(data.get("channel_names"), path, problems)
        labels = _parse_labels(data.get("labels"), path, problems)
        num = data.get("numTraining")
        if "numTraining" in data and (not isinstance(num, int) or isinstance(num, bool) or num < 0):
            problems.append(f"{path}: 'numTraining' must be a non-negative integer, got {num!r}")
        ending = data.get("file_ending")
        if "file_ending" in data and (not isinstance(ending, str) or ending.lower() not in SUPPORTED_ENDINGS):
            problems.append(f"{path}: 'file_ending' {ending!r} is not one of {', '.join(SUPPORTED_ENDINGS)}")
        rco = data.get("regions_class_order")
        regions = labels is not None and any(isinstance(v, list) for v in labels.values())
        if regions and rco is None:
            problems.append(f"{path}: labels define regions (list values) but 'regions_class_order' is missing")
        if rco is not None and (not isinstance(rco, list) or not all(isinstance(x, int) for x in rco)):
            problems.append(f"{path}: 'regions_class_order' must be a list of integers")
        elif rco is not None and labels is not None and len(rco) != len(
                [k for k in labels if k not in ("background", "ignore")]):
            problems.append(f"{path}: 'regions_class_order' needs one entry per region except background/ignore")
        ignore = labels.get("ignore") if labels else None
        if ignore is not None and labels is not None:
            others = [v for k, v in labels.items() if k != "ignore" and not isinstance(v, list)]
            nested = [x for k, v in labels.items() if isinstance(v, list) for x in v]
            if not isinstance(ignore, int) or ignore <= max(others + nested, default=0):
                problems.append(f"{path}: the 'ignore' label must be an integer above every other label value")
        reader = data.get("overwrite_image_reader_writer")
        if problems:
            raise DatasetError(problems)
        return cls(
            name=name,
            channel_names=channels or (),
            labels=labels or {},
            num_training=int(num),
            file_ending=ending.lower() if ending.lower() in SUPPORTED_ENDINGS else ending,
            regions_class_order=tuple(rco) if rco is not None else None,
            ignore_label=ignore,
            force_itk=reader == "SimpleITKIO",
        )


def _parse_channels(raw: Any, path: Path, problems: list[str]) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        problems.append(f"{path}: 'channel_names' must be a non-empty object like {{\"0\": \"CT\"}}")
        return None
    try:
        keys = sorted(int(k) for k in raw)
    except (TypeError, ValueError):
        problems.append(f"{path}: 'channel_names' keys must be channel numbers \"0\", \"1\", ...")
        return None
    if keys != list(range(len(keys))):
        problems.append(f"{path}: 'channel_names' keys must be 0..{len(keys) - 1} without gaps, got {keys}")
        return None
    names = [raw[str(k)] if str(k) in raw else raw[k] for k in keys]
    if not all(isinstance(n, str) and n for n in names):
        problems.append(f"{path}: 'channel_names' values must be non-empty strings (e.g. \"CT\", \"T2\")")
        return None
    return tuple(names)


def _parse_labels(raw: Any, path: Path, problems: list[str]) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        problems.append(f"{path}: 'labels' must be a non-empty object like {{\"background\": 0, \"organ\": 1}}")
        return None
    labels: dict[str, Any] = {}
    for name, v in raw.items():
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, list) and v and all(
                isinstance(x, int) and not isinstance(x, bool) for x in v))):
            problems.append(f"{path}: label '{name}' must be an integer (or a list of integers for a region), got {v!r}")
            return None
        labels[name] = v
    if labels.get("background") != 0:
        problems.append(f"{path}: 'labels' must contain \"background\": 0")
    ints = [v for k, v in labels.items() if isinstance(v, int) and k != "ignore"]
    if len(set(ints)) != len(ints):
        dup = sorted({v for v in ints if ints.count(v) > 1})
        problems.append(f"{path}: label value(s) {dup} are used by more than one name")
    elif not any(isinstance(v, list) for v in labels.values()) and ints and sorted(ints) != list(range(len(ints))):
        problems.append(f"{path}: label values must be consecutive integers 0..{len(ints) - 1}, got {sorted(ints)}")
    return labels


@dataclass(frozen=True)
class Case:
    """One case: its identifier, channel files in channel order, and label file (None for test data)."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None


def list_cases(root: Path, spec: DatasetSpec, images_dir: str = "imagesTr",
               labels_dir: str | None = "labelsTr") -> tuple[list[Case], list[str]]:
    """Match channel files with labels. Returns the complete cases and a list of problems
    (missing channels, label without image, image without label, stray files, broken links, names
    that differ only in upper/lower case)."""
    root = Path(root)
    ending = spec.file_ending
    img_dir = root / images_dir
    problems: list[str] = []
    if not img_dir.is_dir():
        return [], [f"{img_dir}: folder missing; put the images there as {{case}}_0000{ending}"]
    channels_of: dict[str, dict[int, Path]] = {}
    for p, stem in dataset_files(img_dir, ending, problems):
        m = _CHANNEL_RE.match(stem)
        if not m:
            problems.append(f"{p}: name must be {{case}}_XXXX{ending} with a 4-digit channel number")
            continue
        channels_of.setdefault(m["case"], {})[int(m["channel"])] = p
    labels_of: dict[str, Path] = {}
    if labels_dir is not None:
        lab_dir = root / labels_dir
        if not lab_dir.is_dir():
            problems.append(f"{lab_dir}: folder missing; put the labels there as {{case}}{ending}")
        else:
            labels_of = dict((stem, p) for p, stem in dataset_files(lab_dir, ending, problems))
    problems += case_collisions(channels_of, labels_of)
    cases = []
    n = spec.num_channels
    for case_id, chans in sorted(channels_of.items()):
        missing = [c for c in range(n) if c not in chans]
        extra = [c for c in chans if c >= n]
        for c in missing:
            problems.append(f"{img_dir / f'{case_id}_{c:04d}{ending}'}: channel file missing for case '{case_id}' "
                            f"(dataset.json declares {n} channel(s))")
        for c in extra:
            problems.append(f"{chans[c]}: channel {c} is not declared in dataset.json 'channel_names'")
        label = labels_of.get(case_id)
        if labels_dir is not None and label is None:
            problems.append(f"{img_dir / f'{case_id}_0000{ending}'}: image without label "
                            f"(expected {root / labels_dir / f'{case_id}{ending}'})")
        if missing or extra or (labels_dir is not None and label is None):
            continue
        cases.append(Case(case_id, tuple(chans[c] for c in range(n)), label))
    for case_id, p in labels_of.items():
        if case_id not in channels_of:
            problems.append(f"{p}: label without image (expected {img_dir / f'{case_id}_0000{ending}'})")
    return cases, problems


def dataset_files(folder: Path, ending: str, problems: list[str]) -> list[tuple[Path, str]]:
    """``(file, name without ending)`` of the files in ``folder`` that end in ``ending`` (any case).
    Everything else is added to ``problems``: broken links, sub-folders, stray files, and -- when no
    file has ``ending`` but some have another image ending -- one problem saying to fix
    ``file_ending``. Two files whose names differ only in upper/lower case are both reported."""
    found, strays, seen = [], [], {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_symlink() and not p.exists():
            problems.append(f"{p}: broken symbolic link (to {os.readlink(p)}); fix the link or remove it")
        elif p.is_dir():
            problems.append(f"{p}: is a folder; {folder.name}/ holds only image files, move it out")
        elif not p.name.lower().endswith(ending):
            strays.append(p)
        elif p.name.lower() in seen:
            problems.append(f"{seen[p.name.lower()]} and {p.name}: the same file name in different upper/lower "
                            "case; only one can be used (and only one survives on macOS or Windows); keep one")
        else:
            seen[p.name.lower()] = p
            found.append((p, p.name[: -len(ending)]))
    other = sorted({file_ending(p) for p in strays} - {""})
    if strays and not found and other:
        problems.append(f"{folder}: no file ends with '{ending}', the file_ending in dataset.json, but "
                        f"{len([p for p in strays if file_ending(p)])} end(s) with {', '.join(other)}; set "
                        f"\"file_ending\": \"{other[0]}\" in dataset.json (or convert the files)")
    else:
        problems += [f"{p}: stray file (does not end with '{ending}' from dataset.json); move it out of "
                     f"{folder.name}/" for p in strays]
    return found


def case_collisions(*groups: dict[str, Path | dict[int, Path]]) -> list[str]:
    """A problem for every pair of case ids that differ only in upper/lower case (``Liver_1`` and
    ``liver_1``), naming a file of each: their files and outputs collide on case-insensitive file
    systems. ``groups`` map case ids to a file or to files by channel."""
    files: dict[str, Path] = {}
    for group in groups:
        for case_id, v in group.items():
            files.setdefault(case_id, next(iter(v.values())) if isinstance(v, dict) else v)
    problems, first = [], {}
    for case_id in sorted(files):
        other = first.setdefault(case_id.casefold(), case_id)
        if other != case_id:
            problems.append(f"{files[other]} and {files[case_id]}: cases '{other}' and '{case_id}' differ only in "
                            "upper/lower case; their files and outputs collide on case-insensitive file systems "
                            "(macOS, Windows); rename one")
    return problems
