"""Preprocessing: raw cases -> normalised, resampled arrays in the storage format, per configuration.

Per case (nnU-Net v2 order, ``DefaultPreprocessor.run_case_npy`` in
nnunetv2/preprocessing/preprocessors/default_preprocessor.py): read all channels and the label, crop to the
non-zero region (bounding box recorded in raw voxel indices), transpose with
``plans.transpose_forward``, normalise each channel (masked z-score uses the non-zero mask from the
crop), resample to the configuration's spacing, draw foreground voxel locations for oversampling,
then store with :func:`autoseg.storage.write_case` (properties JSON last = completion marker).

Configurations sharing a ``data_identifier`` share one folder
``<dataset_dir>/<plans_name>_<data_identifier>`` (``2d`` and ``3d_cascade_fullres`` use the
full-resolution data); a case is read and normalised once for all folders it goes to. Each folder
holds ``preprocessing.json`` describing how its cases were made; when that changes (new spacing,
normalisation, raw data) the folder's cases are deleted and recomputed, otherwise finished cases
are skipped, so reruns are cheap and an interrupted run resumes.

Label maps are stored with the dataset's label values (0 = background and outside the crop).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.artifacts import Artifact
from autoseg.core.fileops import flush_file_system
from autoseg.core.processes import worker_context
from autoseg.cropping import BBox, crop_to_nonzero
from autoseg.dataset import Case, DatasetSpec
from autoseg.io import Geometry, ImageReadError, read_geometry, read_image, read_volume
from autoseg.normalization import normalize
from autoseg.planning.plans import NormalizationPlan, Plans, ResamplingPlan
from autoseg.progress import progress_bar
from autoseg.resampling import compute_new_shape, resample_image, resample_label
from autoseg.storage import CaseProperties, is_case_done, label_dtype, write_case
from autoseg.workspace import cases_folder, data_folder

LOCATION_SEED = 1234  # nnU-Net seeds foreground location sampling with 1234 for every case
MAX_LOCATIONS_PER_CLASS = 10_000  # nnU-Net: up to 10,000 stored voxels per class ...
MIN_LOCATION_FRACTION = 0.01  # ... but at least 1% of the class's voxels
RECORD_NAME = "preprocessing.json"
# Below this many raw voxels in total a run stays in this process: starting a worker process costs
# about a second (imports), more than preprocessing a few small cases takes.
SMALL_JOB_VOXELS = 20_000_000


@dataclass(frozen=True)
class PreprocessingRecord(Artifact):
    """``preprocessing.json``: how the cases in one data folder were made (a change means redo)."""

    KIND = "preprocessing"
    SCHEMA_VERSION = 1

    dataset_name: str
    plans_name: str
    data_identifier: str
    spacing: tuple[float, ...]
    transpose_forward: tuple[int, int, int]
    normalization: tuple[NormalizationPlan, ...]
    resampling: ResamplingPlan
    labels: dict[str, object]
    source: str = ""  # signature of the raw data (see autoseg.api); "" when unknown


@dataclass(frozen=True)
class Target:
    """One output folder: cases resampled to ``spacing`` (2 entries = keep each case's axis-0 spacing)."""

    data_identifier: str
    folder: Path
    spacing: tuple[float, ...]
    resampling: ResamplingPlan


@dataclass
class CroppedCase:
    """A case after read, crop, transpose and normalisation (before resampling).

    ``data`` float32 (C, X, Y, Z) and ``seg`` (1, X, Y, Z) in transposed axis order; ``bbox`` in raw
    voxel indices; ``spacing`` transposed."""

    case_id: str
    data: np.ndarray
    seg: np.ndarray | None
    bbox: BBox
    geometry: Geometry
    spacing: tuple[float, float, float]


def location_classes(spec: DatasetSpec) -> list[int]:
    """Label values whose voxels are sampled for oversampling: every foreground value (for region
    datasets every non-zero value, since each lies in at least one region); never ignore."""
    return [v for v in spec.label_values if v != 0 and v != spec.ignore_label]


def load_case(case: Case, spec: DatasetSpec, plans: Plans) -> CroppedCase:
    """Read, crop to non-zero, transpose and normalise one case."""
    data, geometry = read_image(list(case.images), force_itk=spec.force_itk)
    seg = None
    if case.label is not None:
        raw, g = read_volume(case.label, force_itk=spec.force_itk)
        if tuple(raw.shape) != tuple(geometry.shape[:3]):
            raise ImageReadError(f"{case.label}: label shape {raw.shape} differs from the image shape "
                                 f"{tuple(geometry.shape[:3])}; run `autoseg plan --check-only` for details")
        top = max(spec.label_values, default=0)
        seg = np.rint(np.asarray(raw)).astype(label_dtype(top))[None]
    return crop_case(case.case_id, data, seg, geometry, plans, tuple(case.images))


def crop_case(case_id: str, data: np.ndarray, seg: np.ndarray | None, geometry: Geometry, plans: Plans,
              sources: tuple) -> CroppedCase:
    """Crop to non-zero, transpose and normalise one case already in memory: ``data`` float32
    (C, X, Y, Z) with ``geometry``, ``seg`` (1, X, Y, Z) or None; ``sources`` names each channel in
    messages (its file, or a description of an in-memory image)."""
    data, seg, bbox, mask = crop_to_nonzero(data, seg)
    tf = tuple(plans.transpose_forward)
    axes = (0,) + tuple(a + 1 for a in tf)
    data = np.ascontiguousarray(data.transpose(axes))
    seg = np.ascontiguousarray(seg.transpose(axes)) if seg is not None else None
    mask = mask.transpose(tf)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by _check_finite, with the file
        data = normalize(data, plans.normalization, mask)
    _check_finite(data, sources, plans)
    spacing = tuple(float(geometry.spacing[a]) for a in tf)
    return CroppedCase(case_id, data, seg, bbox, geometry, spacing)


def _check_finite(data: np.ndarray, sources: tuple, plans: Plans) -> None:
    """Normalised channels must be finite: finite float32 input can still overflow in normalisation
    (e.g. values near 3e38 minus a mean of the other sign), and the network would turn NaN into an
    all-background prediction without complaint."""
    for c, norm in enumerate(plans.normalization):
        n_bad = int(data[c].size - np.count_nonzero(np.isfinite(data[c])))
        if n_bad:
            raise ImageReadError(f"{sources[c]}: {n_bad} voxel(s) become NaN or infinite in '{norm.scheme}' "
                                 f"normalisation (channel '{norm.channel_name}'): the intensities are too large "
                                 "for float32 arithmetic; rescale the image to a normal range and re-export it")


def target_spacing(config_spacing: tuple[float, ...], case_spacing: tuple[float, ...]) -> tuple[float, float, float]:
    """The 3D spacing a case is resampled to; a 2-entry (2D) spacing keeps the case's axis-0 spacing."""
    if len(config_spacing) == 2:
        return (float(case_spacing[0]),) + tuple(float(s) for s in config_spacing)
    if len(config_spacing) != 3:
        raise ValueError(f"plans.json: configuration spacing {config_spacing} must have 2 or 3 entries; "
                         "rerun `autoseg plan`")
    return tuple(float(s) for s in config_spacing)


def sample_foreground_locations(seg: np.ndarray, classes: list[int], seed: int = LOCATION_SEED,
                                max_per_class: int = MAX_LOCATIONS_PER_CLASS,
                                min_fraction: float = MIN_LOCATION_FRACTION) -> dict[int, np.ndarray]:
    """Per class value: ``(N, 3)`` int32 voxel coordinates of ``seg`` ((X, Y, Z) or (1, X, Y, Z)).

    ``N = max(min(max_per_class, n), ceil(min_fraction * n))`` for a class with ``n`` voxels, drawn
    without replacement with one generator seeded ``seed``; a class absent from the case gets an
    empty ``(0, 3)`` array."""
    vol = seg[0] if seg.ndim == 4 else seg
    rng = np.random.default_rng(seed)
    out: dict[int, np.ndarray] = {}
    for c in classes:
        coords = np.argwhere(vol == c)
        n = len(coords)
        if n == 0:
            out[int(c)] = np.zeros((0, 3), dtype=np.int32)
            continue
        k = max(min(max_per_class, n), int(np.ceil(min_fraction * n)))
        pick = np.sort(rng.choice(n, size=k, replace=False)) if k < n else np.arange(n)
        out[int(c)] = coords[pick].astype(np.int32)
    return out


def finish_case(cropped: CroppedCase, spec: DatasetSpec, spacing: tuple[float, ...], resampling: ResamplingPlan):
    """Resample a cropped case to ``spacing`` and sample its foreground locations.

    Returns ``(data, seg, CaseProperties, locations)`` ready for :func:`autoseg.storage.write_case`."""
    target = target_spacing(spacing, cropped.spacing)
    r = resampling
    data = resample_image(cropped.data, cropped.spacing, target, order=r.image_order, order_z=r.order_z_image,
                          anisotropy_threshold=r.anisotropy_threshold)
    seg, locations = None, {}
    if cropped.seg is not None:
        seg = resample_label(cropped.seg, cropped.spacing, target, order=r.label_order, order_z=r.order_z_label,
                             anisotropy_threshold=r.anisotropy_threshold)
        locations = sample_foreground_locations(seg, location_classes(spec))
    g = cropped.geometry
    props = CaseProperties(
        case_id=cropped.case_id,
        original_shape=tuple(int(s) for s in g.shape[:3]),
        original_spacing=tuple(float(s) for s in g.spacing[:3]),
        original_affine=g.affine,
        bbox=tuple((int(a), int(b)) for a, b in cropped.bbox),
        shape_after_crop=tuple(int(s) for s in cropped.data.shape[1:]),
        spacing_after_crop=cropped.spacing,
        shape_after_resample=tuple(int(s) for s in data.shape[1:]),
        spacing=target,
        classes_present=tuple(c for c, loc in locations.items() if len(loc)),
    )
    return data, seg, props, locations


def preprocess_case(case: Case, spec: DatasetSpec, plans: Plans, config_name: str):
    """Preprocess one case for ``config_name``: ``(data, seg, CaseProperties, locations)``.

    ``data`` float32 (C, X, Y, Z) and ``seg`` (1, X, Y, Z) (None without a label) in the transposed
    axis order at the configuration's spacing; locations map class value -> (N, 3) coordinates."""
    cfg = plans.configuration(config_name)
    return finish_case(load_case(case, spec, plans), spec, cfg.spacing, cfg.resampling)


def record_for(plans: Plans, target: Target, source: str = "") -> PreprocessingRecord:
    return PreprocessingRecord(
        dataset_name=plans.dataset_name, plans_name=plans.plans_name, data_identifier=target.data_identifier,
        spacing=tuple(float(s) for s in target.spacing), transpose_forward=tuple(plans.transpose_forward),
        normalization=tuple(plans.normalization), resampling=target.resampling, labels=dict(plans.labels),
        source=source)


def targets_for(plans: Plans, dataset_dir: Path, configs: list[str] | None = None) -> dict[str, Target]:
    """Output folders for ``configs`` (default: all), keyed by data identifier.

    All configurations of the plans sharing an identifier must agree on spacing (a 2-entry 2D
    spacing agrees with a 3D spacing whose last two entries it equals; the 3D one is then used, so
    ``2d`` alone fills the full-resolution folder exactly as ``3d_fullres`` would)."""
    names = list(plans.configurations) if configs is None else list(configs)
    targets: dict[str, Target] = {}
    for ident in dict.fromkeys(plans.configuration(n).data_identifier for n in names):
        sharing = [c for c in plans.configurations.values() if c.data_identifier == ident]
        spacing = tuple(float(s) for s in sharing[0].spacing)
        for cfg in sharing[1:]:
            a, b = sorted((spacing, tuple(float(s) for s in cfg.spacing)), key=len)
            if not np.allclose(a, b[len(b) - len(a):]):
                raise ValueError(f"plans.json: configurations sharing data '{ident}' have different spacings "
                                 f"{spacing} and {cfg.spacing}; give them different data identifiers")
            spacing = b
        targets[ident] = Target(ident, cases_folder(dataset_dir, plans.plans_name, ident), spacing,
                                sharing[0].resampling)
    return targets


# --- running over a dataset ------------------------------------------------------------------------

class InsufficientDiskSpaceError(OSError):
    """The preprocessed data would not fit on the disk."""


class PreprocessingError(RuntimeError):
    """A case failed during preprocessing; the message names the case and the cause."""


@dataclass(frozen=True)
class PreprocessResult:
    folders: dict[str, Path]   # configuration name -> folder of its preprocessed cases
    computed: tuple[str, ...]  # cases (re)computed in this run
    skipped: tuple[str, ...]   # cases already finished in every folder


def prepare_folder(target: Target, record: PreprocessingRecord) -> None:
    """Create the folder; delete its cases when they were made differently, then store ``record``."""
    folder = target.folder
    folder.mkdir(parents=True, exist_ok=True)
    for tmp in folder.glob(".*.tmp"):  # left by an interrupted write
        tmp.unlink(missing_ok=True)
    path = folder / RECORD_NAME
    old = None
    if path.is_file():
        try:
            old = PreprocessingRecord.load(path)
        except Exception:  # unreadable or older schema: treat as different
            old = None
    if old != record:
        for p in list(folder.glob("*.npy")) + list(folder.glob("*_fg.npz")) + list(folder.glob("*.json")):
            if p.name != RECORD_NAME:
                p.unlink(missing_ok=True)
        record.save(path)


def _is_done(target: Target, case: Case) -> bool:
    return is_case_done(target.folder, case.case_id, labelled=case.label is not None)


def process_case(case: Case, spec: DatasetSpec, plans: Plans, targets: list[Target]) -> str:
    """Read one case once and write it to every target folder (runs in a worker process)."""
    cropped = load_case(case, spec, plans)
    for t in targets:
        data, seg, props, locations = finish_case(cropped, spec, t.spacing, t.resampling)
        write_case(t.folder, props, data, seg, locations)
    return case.case_id


def _case_sizes(case: Case, spec: DatasetSpec, fingerprint) -> tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]]:
    """(raw shape, cropped shape, spacing) of a case in file order; the header when no fingerprint."""
    if fingerprint is not None:
        for cf in fingerprint.cases:
            if cf.case_id == case.case_id:
                return tuple(cf.shape_before_crop), tuple(cf.shape_after_crop), tuple(cf.spacing)

    g = read_geometry(case.images[0], force_itk=spec.force_itk)
    return tuple(g.shape[:3]), tuple(g.shape[:3]), tuple(g.spacing[:3])


def _output_voxels(crop_shape, spacing, plans: Plans, target: Target) -> int:
    tf = plans.transpose_forward
    shape_t = [crop_shape[a] for a in tf]
    spacing_t = tuple(spacing[a] for a in tf)
    return int(np.prod(compute_new_shape(shape_t, spacing_t, target_spacing(target.spacing, spacing_t))))


def _free_bytes(path: Path) -> int:
    import shutil

    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _plan_resources(todo, spec, plans, fingerprint, dataset_dir: Path, workers: int | None) -> int:
    """Check the disk has room for the output; return how many workers fit in memory."""
    c = spec.num_channels
    seg_bytes = label_dtype(max(spec.label_values, default=0)).itemsize
    need, peak, total = 0, 0, 0
    for case, targets in todo:
        raw, cropped, spacing = _case_sizes(case, spec, fingerprint)
        total += int(np.prod(raw))
        outs = [_output_voxels(cropped, spacing, plans, t) for t in targets]
        need += sum(n * (4 * c + seg_bytes) + 400_000 for n in outs)  # + foreground locations
        # raw image and label, cropped/normalised copy, spline prefilter (float64) and the outputs
        peak = max(peak, int(np.prod(raw)) * (8 * c + 4) + int(np.prod(cropped)) * 8
                   + max(outs, default=0) * (4 * c + 12))
    free = _free_bytes(dataset_dir)
    if need * 1.05 + 50e6 > free:
        raise InsufficientDiskSpaceError(
            f"preprocessing needs about {need / 1e9:.2f} GB in {dataset_dir} but only {free / 1e9:.2f} GB are "
            "free; free some space or choose another --workdir")
    import os

    n = workers or os.cpu_count() or 1
    if total < SMALL_JOB_VOXELS:
        return 1
    avail = _available_memory()
    if avail is not None and peak > 0:
        n = min(n, max(1, int(avail * 0.8 // peak)))
    return max(1, min(n, len(todo)))


def preprocess_dataset(spec: DatasetSpec, cases: list[Case], plans: Plans, dataset_dir: Path,
                       configs: list[str] | None = None, workers: int | None = None, progress: bool = True,
                       fingerprint=None, source: str = "") -> PreprocessResult:
    """Preprocess ``cases`` for ``configs`` (default: every configuration in ``plans``) into
    ``dataset_dir/<plans_name>_<data_identifier>/``.

    Finished cases are skipped; up to ``workers`` cases (default: CPU count, fewer when memory is
    short) run in parallel processes. ``fingerprint`` (optional) gives cropped shapes for the disk
    space check; ``source`` is a signature of the raw data stored in each folder's record."""
    dataset_dir = Path(dataset_dir)
    for tmp in dataset_dir.glob(".*.tmp"):  # fingerprint/plans temporaries left by a killed run
        tmp.unlink(missing_ok=True)
    targets = targets_for(plans, dataset_dir, configs)
    for t in targets.values():
        prepare_folder(t, record_for(plans, t, source))
    todo = [(case, [t for t in targets.values() if not _is_done(t, case)]) for case in cases]
    skipped = tuple(case.case_id for case, ts in todo if not ts)
    todo = [(case, ts) for case, ts in todo if ts]
    names = list(plans.configurations) if configs is None else list(configs)
    folders = {name: data_folder(dataset_dir, plans, name) for name in names}
    if todo:
        n_workers = _plan_resources(todo, spec, plans, fingerprint, dataset_dir, workers)
        _run(todo, spec, plans, n_workers, progress, f"preprocessing {spec.name} ({', '.join(targets)})")
        flush_file_system(dataset_dir)  # the cases were written without a per-file fsync (storage.write_case)
    return PreprocessResult(folders, tuple(case.case_id for case, _ in todo), skipped)


def _run(todo, spec, plans, workers: int, progress: bool, description: str) -> None:
    with progress_bar(description, len(todo), progress) as advance:
        if workers <= 1:
            for case, targets in todo:
                _guarded(case.case_id, lambda: process_case(case, spec, plans, targets))
                advance(1)
            return
        _run_pool(todo, spec, plans, workers, advance)


def _guarded(case_id: str, fn):
    from concurrent.futures.process import BrokenProcessPool

    try:
        return fn()
    except (ImageReadError, InsufficientDiskSpaceError, BrokenProcessPool, KeyboardInterrupt):
        raise
    except MemoryError:
        raise PreprocessingError(f"case '{case_id}': out of memory; rerun with fewer workers (-j 1)") from None
    except Exception as e:
        raise PreprocessingError(f"case '{case_id}' failed: {type(e).__name__}: {e}") from e


def _run_pool(todo, spec, plans, workers: int, advance) -> None:
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = worker_context()  # no plain fork: safe with threads (progress bar) and torch
    queue = list(reversed(todo))
    pending: dict = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        try:
            while queue or pending:
                while queue and len(pending) < 2 * workers:  # bounded queue, not the whole dataset
                    case, targets = queue.pop()
                    pending[pool.submit(process_case, case, spec, plans, targets)] = case.case_id
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    case_id = pending.pop(fut)
                    try:
                        _guarded(case_id, fut.result)
                    except BrokenProcessPool:
                        raise PreprocessingError(
                            f"a preprocessing worker died while working on '{case_id}' (often: out of memory); "
                            f"rerun with fewer workers, e.g. -j {max(1, workers // 2)}") from None
                    advance(1)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
