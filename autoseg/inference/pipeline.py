"""Predict a folder of images: ``{case}_{XXXX}{ending}`` channel files -> ``{case}{ending}`` label maps.

Per case, in three stages that overlap (a reader thread prepares the next case and a writer thread
finishes the previous one while the networks run; at most three cases are in memory at once):

1. read + preprocess exactly as for training (:func:`autoseg.preprocessing.load_case` and
   :func:`~autoseg.preprocessing.finish_case`: crop to non-zero, transpose, normalise, resample);
2. sliding window with Gaussian weighting and mirroring test-time augmentation, logits averaged over
   windows, mirrorings and folds, then softmax (or sigmoid for regions);
3. probabilities resampled back to the cropped shape (order 1, separate-z on thick slices), argmax
   (or regions painted in ``regions_class_order``), transposed back, pasted into the crop box,
   post-processed when a cross-validation decision exists, and written with the input file's exact
   geometry and header (atomically); ``{case}.npz`` probabilities first when asked.

A cascade model (``3d_cascade_fullres``, :attr:`~autoseg.inference.predictor.Predictor.previous`) runs
both stages per case: the image is preprocessed for each; the low-res model's probabilities (its folds,
the same step and mirroring) are resampled to the full-res preprocessed grid and labelled
(:func:`~autoseg.inference.restore.labels_on_grid`, exactly as its cross-validation segmentations were
made for training), one-hot encoded after the image channels (:func:`autoseg.cascade.with_previous_stage`),
and the cascade model predicts from there; only its prediction is written.

Existing outputs are skipped unless ``overwrite``. A case that cannot be read or predicted is
reported in :class:`PredictReport` and the others still finish.

Interruption and concurrency: every output appears by atomic rename, so a killed run or two runs
writing into the same folder never leave a half-written file under an output name. Each run holds
a shared ``flock`` on the output folder while it writes; a run that can take it exclusively (no other
run is writing there) first deletes the temporary files a killed run left for its cases.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoseg.cascade import foreground_labels, with_previous_stage
from autoseg.core.fileops import writing_into
from autoseg.inference import probabilities as probability_files
from autoseg.inference.predictor import Predictor
from autoseg.inference.probabilities import SavedProbabilities, regions_order
from autoseg.inference.restore import labels_on_grid, to_input_geometry
from autoseg.io import SUPPORTED_ENDINGS, file_ending, strip_ending, write_like
from autoseg.io.images import read_volume_verified, stack_channels
from autoseg.paths import folder_output, os_error_message, same_path
from autoseg.postprocessing import apply_postprocessing
from autoseg.preprocessing import crop_case, finish_case
from autoseg.progress import progress_bar

_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
PREFETCH = 1  # cases read ahead of the networks (being prepared or waiting)
PENDING_WRITES = 1  # predicted cases not yet written


class PredictError(ValueError):
    """The prediction request itself is invalid (input folder, options); cases fail individually."""


@dataclass(frozen=True)
class InputCase:
    """One case of the input folder: channel files in channel order, or why it cannot be predicted."""

    case_id: str
    files: tuple[Path, ...]
    ending: str
    problem: str = ""

    def output_name(self) -> str:
        return f"{self.case_id}{self.ending}"


@dataclass(frozen=True)
class PredictReport:
    """What happened to every case: written, skipped (output existed) or failed with a message."""

    out_dir: Path
    written: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0
    engine: str = ""
    notes: tuple[str, ...] = ()  # e.g. DICOM objects left out (autoseg.inference.sources)
    summary: tuple[str, ...] = ()  # console lines, e.g. the statistics (autoseg.inference.sources)

    @property
    def ok(self) -> bool:
        return not self.failed


def _expected(case: str, n: int, ending: str) -> str:
    names = f"{case}_0000{ending}" if n == 1 else f"{case}_0000{ending} .. {case}_{n - 1:04d}{ending}"
    return names + (f" (or {case}{ending})" if n == 1 else "")


def _case_from_files(case: str, channels: dict[int, list[Path]], singles: list[Path],
                     channel_names: tuple[str, ...]) -> InputCase:
    n = len(channel_names)
    all_files = sorted(singles + [p for ps in channels.values() for p in ps])
    endings = {file_ending(p) for p in all_files}
    ending = file_ending(all_files[0])
    wanted = f"the model expects {n} channel(s) ({', '.join(channel_names)}) as {_expected(case, n, ending)}"
    problem = ""
    if len(endings) > 1 or len(singles) > 1 or any(len(ps) > 1 for ps in channels.values()):
        problem = f"several files for the same case/channel ({', '.join(p.name for p in all_files)}); keep one"
    elif singles and channels:
        problem = f"both {singles[0].name} and channel files ({_names(channels)}); keep one naming"
    elif singles:
        if n == 1:
            return InputCase(case, (singles[0],), ending)
        problem = f"{singles[0].name} is a single file but {wanted}"
    elif sorted(channels) != list(range(n)):
        problem = f"has channel file(s) {_names(channels)} but {wanted}"
    if problem:
        return InputCase(case, tuple(all_files), ending, f"case '{case}': {problem}")
    return InputCase(case, tuple(channels[c][0] for c in range(n)), ending)


def _names(channels: dict[int, list[Path]]) -> str:
    return ", ".join(p.name for c in sorted(channels) for p in channels[c])


def find_inputs(in_dir: Path, channel_names: tuple[str, ...]) -> list[InputCase]:
    """The cases of ``in_dir``: files ``{case}_{XXXX}{ending}`` grouped by case (``{case}{ending}`` is
    a case of its own for one-channel models); endings .nii.gz, .nii, .nrrd, .mha, ... Files of other
    types are ignored; a case whose channels do not match the model gets a ``problem``."""
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise PredictError(f"{in_dir}: input folder not found")
    channels: dict[str, dict[int, list[Path]]] = {}
    singles: dict[str, list[Path]] = {}
    unusable: dict[str, str] = {}  # case -> why one of its entries is not an image file
    for p in sorted(in_dir.iterdir()):
        ending = file_ending(p)
        if p.name.startswith(".") or not ending:
            continue
        if not p.is_file():
            why = (f"{p}: broken symbolic link (to {os.readlink(p)}); fix the link or remove it" if p.is_symlink()
                   else f"{p}: is a folder, not an image file; move it out of the input folder")
            unusable.setdefault(_case_of(strip_ending(p.name, p.name[-len(ending):])), why)
            continue
        stem = strip_ending(p.name, p.name[-len(ending):])
        m = _CHANNEL_RE.match(stem)
        if m:
            channels.setdefault(m["case"], {}).setdefault(int(m["channel"]), []).append(p)
        else:
            singles.setdefault(stem, []).append(p)
    names = sorted(set(channels) | set(singles) | set(unusable))
    if not names:
        raise PredictError(f"{in_dir}: no images to predict (expected {{case}}_0000 files ending in "
                           f"{', '.join(SUPPORTED_ENDINGS)})")
    cases = [_case_from_files(c, channels.get(c, {}), singles.get(c, []), tuple(channel_names)) if c not in unusable
             else InputCase(c, (), "", f"case '{c}': {unusable[c]}") for c in names]
    return _refuse_case_collisions(cases)


def _case_of(stem: str) -> str:
    m = _CHANNEL_RE.match(stem)
    return m["case"] if m else stem


def _refuse_case_collisions(cases: list[InputCase]) -> list[InputCase]:
    """Cases whose ids differ only in upper/lower case (``Liver_1``, ``liver_1``) would write the same
    output file on case-insensitive file systems: each is given a problem naming the other's files."""
    groups: dict[str, list[InputCase]] = {}
    for c in cases:
        groups.setdefault(c.case_id.casefold(), []).append(c)
    out = []
    for c in cases:
        others = [o for o in groups[c.case_id.casefold()] if o is not c]
        if others and not c.problem:
            names = ", ".join(p.name for o in others for p in o.files) or others[0].case_id
            c = InputCase(c.case_id, c.files, c.ending, f"case '{c.case_id}': its name differs from {names} only "
                          "in upper/lower case, so their outputs collide on case-insensitive file systems (macOS, "
                          "Windows); rename one")
        out.append(c)
    return out


def output_problems(cases: list[InputCase], out_dir: Path) -> list[InputCase]:
    """``cases``, where something that is not a file (a folder) stands at a case's output path given a
    problem naming that path and the fix."""
    out = []
    for c in cases:
        blocked = [p for p in (Path(out_dir) / c.output_name(), Path(out_dir) / f"{c.case_id}.npz")
                   if p.exists() and not p.is_file()]
        if blocked and not c.problem:
            c = InputCase(c.case_id, c.files, c.ending, f"{blocked[0]}: a folder stands where this case's output "
                          "goes; move it away or choose another -o")
        out.append(c)
    return out


def is_done(case: InputCase, out_dir: Path, save_probabilities: bool) -> bool:
    """Whether the case's outputs exist (the label map is written last)."""
    seg = Path(out_dir) / case.output_name()
    return seg.is_file() and (not save_probabilities or (Path(out_dir) / f"{case.case_id}.npz").is_file())


def output_names(cases: list[InputCase]) -> list[str]:
    """The files ``predict`` may write for ``cases``: label maps and probabilities."""
    return [n for c in cases for n in (c.output_name(), f"{c.case_id}.npz")]


# --- the three stages of one case -------------------------------------------------------------------

@dataclass
class Prepared:
    """A case after preprocessing: ``data`` (C, X, Y, Z) in the plans' axes at the model's spacing."""

    case: InputCase
    data: np.ndarray
    props: object  # autoseg.storage.CaseProperties
    previous: Prepared | None = None  # a cascade model: the case prepared for its previous stage


def prepare_case(case: InputCase, model: Predictor) -> Prepared:
    """Read and preprocess one case exactly as training data were (no label). ``.gz`` files are
    decompressed to their end (once, :func:`~autoseg.io.images.read_volume_verified`) so a damaged one
    fails here instead of decoding to wrong voxels."""
    force_itk = model.spec.force_itk
    data, geometry = stack_channels((Path(p), Path(p).name, *read_volume_verified(p, force_itk)) for p in case.files)
    return prepare_arrays(case, data, geometry, model, case.files)


def prepare_arrays(case: InputCase, data: np.ndarray, geometry, model: Predictor, sources: tuple) -> Prepared:
    """Preprocess one case already in memory (float32 ``(C, X, Y, Z)`` with its
    :class:`~autoseg.io.Geometry`) exactly as training data were: crop, transpose, normalise, resample.
    ``sources`` names each channel in messages. The folder pipeline and
    :class:`~autoseg.segmenter.Segmenter` both prepare cases here."""
    previous = prepare_arrays(case, data, geometry, model.previous, sources) if model.previous is not None else None
    cropped = crop_case(case.case_id, data, None, geometry, model.plans, tuple(sources))
    data, _, props, _ = finish_case(cropped, model.spec, model.config.spacing, model.config.resampling)
    return Prepared(case, data, props, previous)


def case_probabilities(prepared: Prepared, model: Predictor, engine, step: float, tta: bool):
    """Class (softmax) or region (sigmoid) probabilities ``(K, *S)`` on the preprocessed grid (float32;
    float16 when the volume is very large, see ``sliding.HALF_ACCUMULATION_BYTES``): logits averaged
    over windows, mirrorings and folds (every fold runs on each window, so one ``(K, *S)`` buffer
    serves any number of folds; nnU-Net v2 averages fold logits too), then activated."""
    import torch  # here, not at the top: `autoseg ensemble` imports this module and never needs torch

    from autoseg.inference.sliding import logits_to_probabilities, predict_logits

    data = prepared.data
    if model.previous is not None:  # the cascade: the previous stage's segmentation as extra channels
        data = with_previous_stage(data, previous_stage_labels(prepared, model, engine, step, tta),
                                   foreground_labels(model.spec))
    image = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    axes = model.mirror_axes if tta else ()
    logits = predict_logits(list(engine.networks), image, model.config.patch_size, step=step, mirror_axes=axes,
                            device=engine.device, amp_dtype=engine.amp_dtype)
    return logits_to_probabilities(logits, model.spec.has_regions).numpy()


def previous_stage_labels(prepared: Prepared, model: Predictor, engine, step: float, tta: bool) -> np.ndarray:
    """A cascade model's input segmentation ``(*S)`` on its preprocessed grid: the previous stage's
    probabilities resampled there and labelled (as its cross-validation segmentations were for training)."""
    prev, low = model.previous, prepared.previous
    probs = case_probabilities(low, prev, engine.previous, step, tta)
    return labels_on_grid(probs, low.props.spacing, prepared.props.spacing, prepared.props.shape_after_resample,
                          prev.config.resampling, regions_order(prev.spec))


def finish_prediction(prepared: Prepared, probs: np.ndarray, model: Predictor,
                      with_probabilities: bool) -> tuple[np.ndarray, SavedProbabilities | None]:
    """Back to the input's geometry (:func:`~autoseg.inference.restore.to_input_geometry`) and
    post-processed: the label map in the input's shape ``(X, Y, Z)`` (int16) and, ``with_probabilities``,
    the probabilities over the crop box in the input's axes (:class:`SavedProbabilities`, not
    post-processed). The folder pipeline and :class:`~autoseg.segmenter.Segmenter` both
    finish cases here."""
    seg, saved = to_input_geometry(probs, prepared.props, model.config.resampling, model.plans.transpose_backward,
                                   regions_order(model.spec), keep_probabilities=with_probabilities)
    if model.postprocessing is not None:
        seg = apply_postprocessing(seg, model.postprocessing)
    return seg, saved


def write_case(prepared: Prepared, probs: np.ndarray, model: Predictor, out_dir: Path,
               save_probabilities: bool) -> Path:
    """Finish one case (:func:`finish_prediction`) and write it: probabilities first, the label map last."""
    case = prepared.case
    seg, saved = finish_prediction(prepared, probs, model, save_probabilities)
    if saved is not None:
        probability_files.save_probabilities(Path(out_dir) / f"{case.case_id}.npz", saved)
        del saved
    return write_like(seg, case.files[0], Path(out_dir) / case.output_name())


# --- the folder ----------------------------------------------------------------------------------

def _message(e: BaseException) -> str:
    if isinstance(e, MemoryError):
        return "out of memory; close other programs or predict on a machine with more memory"
    if isinstance(e, OSError) and os_error_message(e):
        return os_error_message(e)
    if isinstance(e, (ValueError, OSError)) and str(e):
        return str(e)
    return f"{type(e).__name__}: {e}"


@dataclass
class _Results:
    written: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, case: InputCase, error: BaseException | str) -> None:
        with self.lock:
            self.failed.append((case.case_id, error if isinstance(error, str) else _message(error)))

    def done(self, case: InputCase) -> None:
        with self.lock:
            self.written.append(case.case_id)


def _acquire(slots: threading.Semaphore, stop: threading.Event) -> bool:
    """Take a slot unless ``stop`` is set (polling, so a stopped consumer never blocks the producer)."""
    while not slots.acquire(timeout=0.1):
        if stop.is_set():
            return False
    return not stop.is_set()


def run_cases(todo: list[InputCase], model: Predictor, engine, out_dir: Path, step: float, tta: bool,
              save_probs: bool, advance=lambda n=1: None) -> _Results:
    """Predict ``todo`` with a reader thread, the networks in this thread and a writer thread.

    Semaphores bound the cases in memory: at most :data:`PREFETCH` read ahead (being prepared or
    waiting) and :data:`PENDING_WRITES` predicted but not yet written."""
    results = _Results()
    ready: queue.Queue = queue.Queue()
    to_write: queue.Queue = queue.Queue()
    read_slots, write_slots = threading.Semaphore(PREFETCH), threading.Semaphore(PENDING_WRITES)
    stop = threading.Event()

    def reader():
        for case in todo:
            if not _acquire(read_slots, stop):
                return
            try:
                item = prepare_case(case, model)
            except Exception as e:  # reported for this case; the others go on
                item = e
            ready.put((case, item))
        ready.put(None)

    def writer():
        while (item := to_write.get()) is not None:
            prepared, probs = item
            try:
                write_case(prepared, probs, model, out_dir, save_probs)
                results.done(prepared.case)
            except Exception as e:
                results.fail(prepared.case, e)
            del item, prepared, probs
            write_slots.release()
            advance(1)

    threads = [threading.Thread(target=reader, name="autoseg-read", daemon=True),
               threading.Thread(target=writer, name="autoseg-write", daemon=True)]
    for t in threads:
        t.start()
    try:
        while (item := ready.get()) is not None:
            case, prepared = item
            del item
            read_slots.release()
            if isinstance(prepared, BaseException):
                results.fail(case, prepared)
                advance(1)
                continue
            try:
                probs = case_probabilities(prepared, model, engine, step, tta)
            except Exception as e:
                results.fail(case, e)
                advance(1)
                continue
            prepared.data = prepared.previous = None  # the writer needs only the case and its properties
            write_slots.acquire()
            to_write.put((prepared, probs))
            del prepared, probs
    finally:
        stop.set()  # the reader stops; what was predicted is still written
        to_write.put(None)
        for t in reversed(threads):
            t.join()
    return results


def predict_folder(model: Predictor, in_dir: Path, out_dir: Path, *, step: float = 0.5, tta: bool = True,
                   save_probabilities: bool = False, overwrite: bool = False, device: str = "auto",
                   backend: str = "auto", precision: str = "auto", progress: bool = True,
                   release_networks: bool = False) -> PredictReport:
    """Predict every case of ``in_dir`` into ``out_dir`` with ``model``; see the module docstring.

    ``release_networks``: for a caller done with ``model``, drop its PyTorch networks once OpenVINO has
    compiled its own copies (``model.networks`` becomes empty; 0.12 GB per fold of a 30 M-parameter
    U-Net)."""
    started = time.perf_counter()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not 0 < step <= 1:
        raise PredictError(f"--step {step}: the window step is a fraction of the patch size in (0, 1]; default 0.5")
    if same_path(out_dir, in_dir):
        raise PredictError(f"{out_dir}: write predictions to another folder than the input images")
    folder_output(out_dir, "-o")
    cases = output_problems(find_inputs(in_dir, model.spec.channel_names), out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with writing_into(out_dir, output_names(cases)):
        return _predict_cases(model, cases, out_dir, step, tta, save_probabilities, overwrite, device, backend,
                              precision, progress, started, release_networks)


def model_engine(model: Predictor, backend: str, precision: str, device: str, release_networks: bool = False):
    """The :class:`~autoseg.inference.backends.Engine` that runs ``model``'s networks (``--backend``,
    ``--precision``, ``--device``). ``release_networks``: for an owner done with the PyTorch networks,
    drop them once OpenVINO has compiled its own copies (``model.networks`` becomes empty)."""
    from autoseg.core.runtime import resolve_device  # torch: see case_probabilities
    from autoseg.inference.backends import make_engine

    example = (1, model.num_channels, *model.config.patch_size)
    sources = model.checkpoint_paths or None
    engine = make_engine(model.networks, backend, precision, resolve_device(device), example, sources)
    if release_networks and engine.backend == "openvino":
        model.networks = ()  # only the compiled copies run from here on
    if model.previous is not None:  # a cascade: its previous stage runs on the same backend
        engine = dataclasses.replace(engine, previous=model_engine(model.previous, backend, precision, device,
                                                                   release_networks))
    return engine


def _predict_cases(model: Predictor, cases: list[InputCase], out_dir: Path, step: float, tta: bool,
                   save_probabilities: bool, overwrite: bool, device: str, backend: str, precision: str,
                   progress: bool, started: float, release_networks: bool = False) -> PredictReport:
    bad = [c for c in cases if c.problem]
    skipped = [c for c in cases if not c.problem and not overwrite and is_done(c, out_dir, save_probabilities)]
    todo = [c for c in cases if not c.problem and c not in skipped]
    engine = model_engine(model, backend, precision, device, release_networks) if todo else None
    results = _Results()
    for c in bad:
        results.fail(c, c.problem)
    if todo:
        with progress_bar(f"predicting ({engine.describe()})", len(todo), progress) as advance:
            done = run_cases(todo, model, engine, out_dir, step, tta, save_probabilities, advance)
        results.written.extend(done.written)
        results.failed.extend(done.failed)
    return PredictReport(out_dir=out_dir, written=tuple(sorted(results.written)),
                         skipped=tuple(c.case_id for c in skipped), failed=tuple(sorted(results.failed)),
                         seconds=time.perf_counter() - started, engine=engine.describe() if engine else "")
