"""Convert a Medical Segmentation Decathlon task folder to the nnU-Net v2 raw layout.

MSD layout (``Task04_Hippocampus/``)::

    dataset.json    modality {"0": "MRI", ...}, labels {"0": "background", "1": "..."},
                    training [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}],
                    test ["./imagesTs/y.nii.gz"]
    imagesTr/x.nii.gz   3D, or 4D (X, Y, Z, C) with all channels in one file
    labelsTr/x.nii.gz
    imagesTs/y.nii.gz

Result (``DatasetXXX_Name/``, XXX = the task number unless ``dataset_id`` is given): one file per
channel ``x_0000.nii.gz``, ``x_0001.nii.gz``, ... cut from the 4D image with the same 3D affine,
header and voxel values; labels copied byte for byte; dataset.json with ``channel_names``,
``labels``, ``numTraining`` and ``file_ending``. The files listed in MSD's dataset.json are the
cases; macOS ``._*`` resource files are skipped. The new folder is built under a temporary name and
renamed into place, so an interrupted conversion leaves nothing that looks finished.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from autoseg import jsonfiles
from autoseg.core.fileops import atomic_write_json, staged_folder
from autoseg.dataset import DatasetError, DatasetSpec
from autoseg.integrity import DatasetWarning
from autoseg.io.images import nifti_like_image
from autoseg.paths import PathError, inside

FILE_ENDING = ".nii.gz"
_TASK_RE = re.compile(r"^Task(?P<number>\d+)_(?P<name>.+)$")
_KEEP_KEYS = ("name", "description", "reference", "licence", "release", "tensorImageSize")


def convert_msd(task_dir: Path, out_dir: Path, dataset_id: int | None = None, overwrite: bool = False) -> Path:
    """Convert ``task_dir`` (an MSD ``TaskXX_Name`` folder) into ``out_dir/DatasetXXX_Name`` and return
    that path. An existing non-empty folder is replaced only with ``overwrite=True``.

    Raises :class:`DatasetError` listing every problem found before anything is written (missing
    dataset.json keys, missing or unreadable files, channel counts that disagree with ``modality``).
    """
    task_dir, out_dir = Path(task_dir), Path(out_dir)
    meta = read_msd_json(task_dir)
    target = out_dir / dataset_folder_name(task_dir, dataset_id)
    if inside(target, task_dir) or inside(task_dir, target):
        raise PathError(f"{target}: the converted dataset would be written over or into the MSD task folder "
                        f"{task_dir}; choose another OUT_DIR")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target}: already exists and is not empty; add --overwrite to replace it or "
                              "choose another --dataset-id")
    n_channels = len(meta["modality"])
    training = _unique_training([e for e in meta["training"] if not _is_resource_fork(e["image"])], task_dir,
                                meta.get("numTraining"))
    test = _unique_test([p for p in meta.get("test", []) if not _is_resource_fork(p)], task_dir)
    _verify_files(task_dir, training, test, n_channels)
    out_json = nnunet_dataset_json(meta, len(training), task_dir.name)
    DatasetSpec.from_json(out_json, target / "dataset.json", target.name)  # validate before writing
    with staged_folder(target) as tmp:  # in place in one step; a killed run's staging folder goes next time
        for sub in ("imagesTr", "labelsTr") + (("imagesTs",) if test else ()):
            (tmp / sub).mkdir()
        for entry in training:
            case_id = _case_id(entry["image"])
            split_channels(task_dir / entry["image"], tmp / "imagesTr", case_id)
            shutil.copyfile(task_dir / entry["label"], tmp / "labelsTr" / f"{case_id}{FILE_ENDING}")
        for rel in test:
            split_channels(task_dir / rel, tmp / "imagesTs", _case_id(rel))
        atomic_write_json(tmp / "dataset.json", out_json)
    return target


def dataset_folder_name(task_dir: Path, dataset_id: int | None) -> str:
    """``DatasetXXX_Name`` for an MSD ``TaskXX_Name`` folder (XXX = task number unless given)."""
    m = _TASK_RE.match(Path(task_dir).name)
    if m is None and dataset_id is None:
        raise DatasetError([f"{task_dir}: folder name is not TaskXX_Name, so the dataset number is unknown; "
                            "give it with --dataset-id"])
    number = dataset_id if dataset_id is not None else int(m["number"])
    if not isinstance(number, int) or not 1 <= number <= 999:
        raise DatasetError([f"dataset id must be an integer in 1..999, got {number!r}"])
    name = m["name"] if m else Path(task_dir).name
    return f"Dataset{number:03d}_{name}"


def read_msd_json(task_dir: Path) -> dict[str, Any]:
    """Read and validate an MSD dataset.json (all problems at once)."""
    path = Path(task_dir) / "dataset.json"
    if not Path(task_dir).is_dir():
        raise DatasetError([f"{task_dir}: MSD task folder not found"])
    if not path.is_file():
        raise DatasetError([f"{path}: missing; an MSD task folder holds dataset.json, imagesTr/ and labelsTr/"])
    try:
        meta = jsonfiles.loads(path.read_text(encoding="utf-8-sig"), path)  # a byte-order mark is accepted
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError([f"{path}: not valid JSON ({e})"]) from None
    if not isinstance(meta, dict):
        raise DatasetError([f"{path}: must hold a JSON object"])
    problems = [f"{path}: missing key '{k}' (MSD dataset.json needs modality, labels and training)"
                for k in ("modality", "labels", "training") if k not in meta]
    if isinstance(meta.get("modality"), dict):
        if sorted(meta["modality"]) != [str(i) for i in range(len(meta["modality"]))] or not meta["modality"]:
            problems.append(f"{path}: 'modality' keys must be \"0\", \"1\", ... without gaps")
    elif "modality" in meta:
        problems.append(f"{path}: 'modality' must be an object like {{\"0\": \"MRI\"}}")
    if isinstance(meta.get("labels"), dict):
        if not all(str(k).isdigit() and isinstance(v, str) for k, v in meta["labels"].items()):
            problems.append(f"{path}: 'labels' must map label numbers to names, like {{\"0\": \"background\"}}")
    elif "labels" in meta:
        problems.append(f"{path}: 'labels' must be an object like {{\"0\": \"background\", \"1\": \"tumour\"}}")
    training = meta.get("training")
    if "training" in meta and (not isinstance(training, list) or not all(
            isinstance(e, dict) and isinstance(e.get("image"), str) and isinstance(e.get("label"), str)
            for e in training)):
        problems.append(f"{path}: 'training' must be a list of {{\"image\": ..., \"label\": ...}} entries")
    if not isinstance(meta.get("test", []), list) or not all(isinstance(p, str) for p in meta.get("test", [])):
        problems.append(f"{path}: 'test' must be a list of image paths")
    if problems:
        raise DatasetError(problems)
    return meta


def nnunet_dataset_json(meta: dict[str, Any], num_training: int, source: str) -> dict[str, Any]:
    """The nnU-Net v2 dataset.json for a validated MSD dataset.json."""
    labels: dict[str, int] = {}
    for value, name in sorted(meta["labels"].items(), key=lambda kv: int(kv[0])):
        key = "background" if int(value) == 0 else name
        labels[key if key not in labels else f"{key}_{value}"] = int(value)
    out = {"channel_names": {k: meta["modality"][k] for k in sorted(meta["modality"], key=int)},
           "labels": labels, "numTraining": num_training, "file_ending": FILE_ENDING}
    out.update({k: meta[k] for k in _KEEP_KEYS if k in meta})
    out["converted_from"] = f"Medical Segmentation Decathlon {source}"
    return out


def _unique_training(entries: list[dict], task_dir: Path, declared: Any = None) -> list[dict]:
    """The training entries, each case once. A repeated entry is dropped with a warning (counting it
    would make numTraining wrong); one case listed with different files is an error; an MSD
    numTraining that disagrees with the distinct cases is a warning (the list decides)."""
    path = Path(task_dir) / "dataset.json"
    by_case: dict[str, list[dict]] = {}
    for e in entries:
        by_case.setdefault(Path(e["image"]).name.removesuffix(FILE_ENDING), []).append(e)
    problems = []
    for case_id, listed in by_case.items():
        files = {(_normalised(e["image"]), _normalised(e["label"])) for e in listed}
        if len(files) > 1:
            problems.append(f"{path}: case '{case_id}' is listed {len(listed)} times in 'training' with different "
                            f"files ({'; '.join(f'{i} + {lab}' for i, lab in sorted(files))}); keep one entry")
        elif len(listed) > 1:
            warnings.warn(f"{path}: case '{case_id}' is listed {len(listed)} times in 'training'; converted once",
                          DatasetWarning, stacklevel=3)
    if problems:
        raise DatasetError(problems)
    unique = [listed[0] for listed in by_case.values()]
    if isinstance(declared, int) and not isinstance(declared, bool) and declared != len(unique):
        warnings.warn(f"{path}: numTraining is {declared} but 'training' lists {len(unique)} distinct case(s); "
                      f"the converted dataset.json says {len(unique)}", DatasetWarning, stacklevel=3)
    return unique


def _unique_test(paths: list[str], task_dir: Path) -> list[str]:
    seen: dict[str, str] = {}
    for rel in paths:
        case_id = Path(rel).name.removesuffix(FILE_ENDING)
        if case_id in seen:
            warnings.warn(f"{Path(task_dir) / 'dataset.json'}: test image '{case_id}' is listed more than once; "
                          "converted once", DatasetWarning, stacklevel=3)
        seen.setdefault(case_id, rel)
    return list(seen.values())


def _normalised(rel: str) -> str:
    return Path(rel).as_posix().removeprefix("./")


def _is_resource_fork(rel: str) -> bool:
    return Path(rel).name.startswith("._")


def _case_id(rel: str) -> str:
    name = Path(rel).name
    if not name.endswith(FILE_ENDING):
        raise DatasetError([f"{rel}: MSD files must end with {FILE_ENDING}"])
    return name[: -len(FILE_ENDING)]


def _verify_files(task_dir: Path, training: list[dict], test: list[str], n_channels: int) -> None:
    """Every listed file exists, has a readable NIfTI header, images hold ``n_channels`` channels and
    labels are 3D. Raises :class:`DatasetError` with every problem."""
    problems = []
    for rel in [e["image"] for e in training] + list(test):
        shape = _header_shape(task_dir / rel, problems)
        if shape is not None and (len(shape) not in (3, 4) or (shape[3] if len(shape) == 4 else 1) != n_channels):
            problems.append(f"{task_dir / rel}: shape {shape} does not hold the {n_channels} channel(s) "
                            "that 'modality' declares")
    for rel in [e["label"] for e in training]:
        shape = _header_shape(task_dir / rel, problems)
        if shape is not None and len(shape) != 3:
            problems.append(f"{task_dir / rel}: a label must be 3D, got shape {shape}")
    if problems:
        raise DatasetError(problems)


def _header_shape(path: Path, problems: list[str]) -> tuple[int, ...] | None:
    import nibabel as nib

    if not path.name.endswith(FILE_ENDING):
        problems.append(f"{path}: MSD files must end with {FILE_ENDING}")
    elif not path.is_file():
        problems.append(f"{path}: listed in dataset.json but missing; restore it or remove its entry")
    else:
        try:
            return tuple(nib.load(str(path)).shape)
        except Exception as e:
            problems.append(f"{path}: not a readable NIfTI file ({e}); re-download the task")
    return None


def split_channels(src: Path, dst_dir: Path, case_id: str) -> list[Path]:
    """Write each channel of ``src`` (3D, or 4D with channels last) as ``{case_id}_XXXX.nii.gz``.

    A 3D file is copied byte for byte; a 4D file is cut into 3D files that keep the affine, the
    qform/sform codes, units and the voxel values (scaled values are stored as float32)."""
    import nibabel as nib

    img = nib.load(str(src))
    if img.ndim == 3:
        out = dst_dir / f"{case_id}_0000{FILE_ENDING}"
        shutil.copyfile(src, out)
        return [out]
    data = np.asanyarray(img.dataobj)
    if data.dtype != img.get_data_dtype():  # scl_slope/inter applied: keep the scaled values
        data = data.astype(np.float32)
    outs = []
    for c in range(img.shape[3]):
        channel = np.ascontiguousarray(data[..., c])
        part = nifti_like_image(channel, img)  # the 4D file's header and geometry, one channel
        out = dst_dir / f"{case_id}_{c:04d}{FILE_ENDING}"
        nib.save(part, str(out))
        outs.append(out)
    return outs
