"""The Python API of prediction: load a model once, then segment images one call at a time.

::

    from autoseg import Segmenter

    seg = Segmenter.from_workspace("autoseg_work", "Dataset004_Hippocampus")
    labels = seg.predict(nib.load("case.nii.gz"))          # a nibabel image back, same affine and header

A case takes the same path as in ``autoseg predict``, through the same functions of
:mod:`autoseg.inference.pipeline`: :func:`~autoseg.inference.pipeline.prepare_arrays` (crop,
transpose, normalise, resample; :func:`~autoseg.inference.pipeline.prepare_case` reads files first),
:func:`~autoseg.inference.pipeline.case_probabilities` (sliding window, test-time mirroring, folds
averaged) and :func:`~autoseg.inference.pipeline.finish_prediction` (back to the input's grid,
argmax, post-processing). The folder pipeline runs the same three stages in overlapping threads and
writes files; here they run in the caller's thread and the result comes back in memory, converted
at the edge by :mod:`autoseg.io.in_memory`. So for the same image and options the labels equal
those ``autoseg predict`` writes.
"""

from __future__ import annotations

import dataclasses
import tempfile
import threading
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.api import model_dir_for
from autoseg.inference.choice import ModelChoice
from autoseg.inference.pipeline import (InputCase, PredictError, case_probabilities, finish_prediction,
                                        model_engine, prepare_arrays, prepare_case)
from autoseg.inference.predictor import Predictor, PredictorError, load_predictor
from autoseg.inference.probabilities import place
from autoseg.io import file_ending, write_like
from autoseg.io.images import stack_channels
from autoseg.io.in_memory import (InputImageError, check_files, kind_of, labels_like, probabilities_like, read_channel,
                                  save_nifti)
from autoseg.workspace import Workspace

CASE_ID = "image"  # the case name of an in-memory image in messages


@dataclass(frozen=True)
class SegmenterOptions:
    """How the networks run; the defaults are ``autoseg predict``'s.

    ``device``: ``auto`` (CUDA, else MPS, else CPU), ``cpu``, ``cuda``, ``cuda:1``, ``mps``;
    ``backend``: ``auto``, ``torch`` or ``openvino`` and ``precision``: ``auto``, ``fp32``, ``bf16``,
    ``fp16`` or ``int8`` (:mod:`autoseg.inference.backends`); ``tta``: mirror test-time augmentation;
    ``step``: sliding-window step as a fraction of the patch size, in (0, 1]."""

    device: str = "auto"
    backend: str = "auto"
    precision: str = "auto"
    tta: bool = True
    step: float = 0.5

    @classmethod
    def of(cls, options: dict) -> "SegmenterOptions":
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; the options are {', '.join(names)}")
        made = cls(**options)
        if not 0 < made.step <= 1:
            raise PredictError(f"step={made.step}: the window step is a fraction of the patch size in (0, 1]; "
                               "default 0.5")
        return made


class Segmenter:
    """A trained model loaded once, predicting one image per :meth:`predict` call.

    Make one with :meth:`from_workspace` (a model trained or imported into a workspace) or
    :meth:`from_model_zip` (a zip made by ``autoseg export``).

    Thread safety: :meth:`predict` may be called from several threads at once on one Segmenter. The
    networks run one case at a time (a lock around the sliding window; one OpenVINO network holds one
    inference request), while reading, preprocessing and resampling of other calls go on beside it. Each
    call gets exactly the result it would get alone. Use one Segmenter per GPU to run several networks
    at once.
    """

    def __init__(self, predictor: Predictor, options: SegmenterOptions | None = None,
                 scratch: tempfile.TemporaryDirectory | None = None):
        """``predictor``: :func:`~autoseg.inference.predictor.load_predictor`'s model (its PyTorch networks
        are moved to the device, or dropped once OpenVINO has compiled its own copies); ``scratch``: a
        temporary workspace to delete on :meth:`close`."""
        self.predictor = predictor
        self.options = options or SegmenterOptions()
        self._scratch = scratch
        self._lock = threading.Lock()
        o = self.options
        self.engine = model_engine(predictor, o.backend, o.precision, o.device, release_networks=True)

    # --- making one ---------------------------------------------------------------------------------

    @classmethod
    def from_workspace(cls, workdir: str | Path, dataset: str | int | None = None, *, config: str | None = None,
                       arch: str | None = None, plans: str | None = None, folds: Sequence | None = None,
                       checkpoint: str = "final", **options) -> "Segmenter":
        """The trained model of ``dataset`` (name or number; may be left out when the workspace holds one)
        in the workspace folder ``workdir``, chosen as ``autoseg predict`` chooses it: ``config``,
        ``arch``, ``plans`` pick among several trained models, ``folds`` (default: every trained fold,
        their logits averaged) and ``checkpoint`` (``final`` or ``best``). ``options``: ``device``,
        ``backend``, ``precision``, ``tta``, ``step`` (:class:`SegmenterOptions`)."""
        settings = SegmenterOptions.of(options)
        root = Path(workdir)
        if not root.is_dir():
            raise PredictorError(f"workdir {root}: folder not found; give the workspace folder that holds results/ "
                                 "(autoseg's --workdir)")
        model_dir = model_dir_for(Workspace(root), ModelChoice(dataset=None if dataset is None else str(dataset),
                                                               config=config, arch=arch, plans=plans))
        return cls(load_predictor(model_dir, folds, checkpoint), settings)

    @classmethod
    def from_model_zip(cls, path: str | Path, workdir: str | Path | None = None, *, folds: Sequence | None = None,
                       checkpoint: str = "final", **options) -> "Segmenter":
        """The model of a zip made by ``autoseg export``, installed into the workspace ``workdir`` as
        ``autoseg predict --model model.zip`` installs it (once; the installed copy is used next time), or,
        without ``workdir``, into a temporary folder deleted by :meth:`close` (or when the Segmenter is
        garbage-collected). ``folds``, ``checkpoint`` and ``options`` as in :meth:`from_workspace`."""
        settings = SegmenterOptions.of(options)
        path = Path(path)
        if not path.is_file() or not zipfile.is_zipfile(path):
            raise PredictorError(f"{path}: " + ("not a zip file exported by `autoseg export`" if path.is_file()
                                                else "not found; give the .zip that `autoseg export` wrote"))
        scratch = tempfile.TemporaryDirectory(prefix="autoseg-model-") if workdir is None else None
        try:
            root = Path(scratch.name if scratch is not None else workdir)
            predictor = load_predictor(model_dir_for(Workspace(root), ModelChoice(model=path)), folds, checkpoint)
            return cls(predictor, settings, scratch)
        except BaseException:
            if scratch is not None:
                scratch.cleanup()
            raise

    def close(self) -> None:
        """Delete the temporary workspace of :meth:`from_model_zip` (nothing else to release)."""
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- what the model is --------------------------------------------------------------------------

    @property
    def channel_names(self) -> tuple[str, ...]:
        """The input channels, in the order :meth:`predict` takes them."""
        return tuple(self.predictor.spec.channel_names)

    @property
    def labels(self) -> dict:
        """The dataset's labels: name -> value (or, for region models, the values each region covers)."""
        return dict(self.predictor.spec.labels)

    def __repr__(self) -> str:
        return f"Segmenter({self.predictor.describe()}, {self.engine.describe()})"

    # --- predicting ---------------------------------------------------------------------------------

    def predict(self, image, *, spacing=None, affine=None, out: str | Path | None = None,
                return_probabilities: bool = False):
        """Segment one image; the result comes back as the same kind of object.

        ``image`` is one of (for a model with several channels: a list or tuple of them, one per channel
        in the order of :attr:`channel_names`, all of one kind and on one voxel grid):

        - a nibabel image -> a ``nibabel.Nifti1Image`` of the labels with the input's affine and header
          (qform/sform and their codes);
        - a SimpleITK image -> a SimpleITK image with the input's origin, spacing and direction;
        - a path (``str`` or ``Path``) to an image file (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ...) or
          to a folder or ``.zip`` holding one DICOM series -> a ``nibabel.Nifti1Image`` placed like the file
          (or the series); with ``out=``, the labels are written there instead (as ``autoseg predict``
          writes them, in the format of ``out``'s ending; NIfTI for DICOM) and ``out`` is returned;
        - a NumPy array ``(X, Y, Z)`` with ``spacing=(sx, sy, sz)`` in mm per array axis (or ``affine=``, a
          4x4 voxel-to-world matrix whose column lengths are the spacing) -> a NumPy label array of the
          input's shape and axis order. Only the voxel size changes the prediction, so origin and
          direction are not asked for. (An array from ``sitk.GetArrayFromImage`` is ordered (z, y, x):
          give ``spacing=img.GetSpacing()[::-1]``.)

        Labels are the dataset's label values (uint8 when they fit), post-processed when the model
        has a ``postprocessing.json``. With ``return_probabilities=True`` the result is ``(labels,
        probabilities)``: a float32 NumPy array ``(K, ...)`` of the class (softmax) or, for region
        models, region (sigmoid) probabilities over the input's whole voxel grid, in the voxel order of
        the input's arrays -- ``(K, X, Y, Z)`` for nibabel, NumPy and paths, ``(K, Z, Y, X)`` for
        SimpleITK -- not post-processed. Outside the non-zero box the image was cropped to,
        background is certain.

        Raises :class:`~autoseg.io.in_memory.InputImageError` (or :class:`~autoseg.io.ImageReadError` for
        files) naming the problem: wrong number of channels, not 3D, no spacing, mixed kinds, ...
        """
        channels = list(image) if isinstance(image, (list, tuple)) else [image]
        kind = self._check_channels(channels, isinstance(image, (list, tuple)))
        if (spacing is not None or affine is not None) and kind != "numpy":
            raise InputImageError(f"spacing= and affine= are for NumPy arrays; a {kind} input carries its own geometry")
        if out is not None and kind not in ("file", "dicom"):
            raise InputImageError(f"out= is for images given by path; save the returned {kind} result yourself")
        prepared, geometry = self._prepare(channels, kind, spacing, affine)
        probs = self._probabilities(prepared)
        seg, saved = finish_prediction(prepared, probs, self.predictor, return_probabilities)
        del probs
        labels = self._labels_out(seg, kind, channels[0], geometry, out)
        if not return_probabilities:
            return labels
        full = place(saved, tuple((0, int(s)) for s in saved.original_shape))
        return labels, probabilities_like(full, kind)

    def _prepare(self, channels: list, kind: str, spacing, affine):
        """The preprocessed case and the input's geometry (None for files: the reader keeps the file's)."""
        if kind == "file":
            files = tuple(Path(c) for c in channels)
            check_files(files)
            return prepare_case(InputCase(CASE_ID, files, file_ending(files[0])), self.predictor), None
        sources = [self._source(kind, i, c) for i, c in enumerate(channels)]
        read = (read_channel(c, kind, s, spacing, affine) for s, c in zip(sources, channels))
        data, geometry = stack_channels((ch.source, ch.source, ch.voxels, ch.geometry) for ch in read)
        return prepare_arrays(InputCase(CASE_ID, (), ""), data, geometry, self.predictor, tuple(sources)), geometry

    def _probabilities(self, prepared):
        """The networks' probabilities on the preprocessed grid; one case at a time (see the class)."""
        o = self.options
        with self._lock:
            probs = case_probabilities(prepared, self.predictor, self.engine, o.step, o.tta)
        prepared.data = None
        return probs

    def _check_channels(self, channels: list, as_list: bool) -> str:
        """The one kind of every channel; the channel count must be the model's."""
        names = self.channel_names
        if len(channels) != len(names):
            given = f"a list of {len(channels)} image(s)" if as_list else "one image"
            raise InputImageError(f"the model expects {len(names)} channel(s) ({', '.join(names)}) but got {given}; "
                                  f"give {'one image' if len(names) == 1 else f'a list of {len(names)} images'} "
                                  "in that order")
        kinds = [kind_of(c) for c in channels]
        if len(set(kinds)) > 1:
            raise InputImageError(f"the channels are of different kinds ({', '.join(kinds)}); give all as one kind")
        return kinds[0]

    def _source(self, kind: str, index: int, image) -> str:
        """How channel ``index`` is named in messages."""
        what = str(image) if kind == "dicom" else f"the {'NumPy array' if kind == 'numpy' else kind + ' image'}"
        if len(self.channel_names) == 1:
            return what
        return f"channel {index} ({self.channel_names[index]}, {what})"

    def _labels_out(self, seg: np.ndarray, kind: str, reference, geometry, out):
        if out is None:
            return labels_like(seg, kind, reference, geometry)
        if kind == "file":
            return write_like(seg, Path(reference), Path(out))  # as autoseg predict writes it
        return save_nifti(labels_like(seg, kind, reference, geometry), Path(out))
