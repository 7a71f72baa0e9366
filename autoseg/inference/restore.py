"""From network output back to the input's geometry: the one path ``autoseg predict`` and the
end-of-training validation both take.

Probabilities ``(K, *shape_after_resample)`` on the preprocessed grid (the plans' axis order) are

1. resampled back to the cropped shape ``shape_after_crop`` (order 1, separately along z on thick
   slices: the current spacing, the original spacing and the target shape all take part, as in
   nnU-Net v2's ``convert_predicted_logits_to_segmentation_with_correct_shape``,
   nnunetv2/inference/export_prediction.py);
2. turned into labels: argmax, or each sigmoid region above 0.5 painted with its
   ``regions_class_order`` value (:func:`~autoseg.inference.probabilities.labels_from_probabilities`);
   without saved probabilities one channel is resampled at a time, the argmax kept as a running
   maximum, so memory does not grow with the number of classes;
3. transposed back to the file's axis order and pasted into the crop box of the raw file's shape
   ``(X, Y, Z)``; outside the box is background.

With ``keep_probabilities`` the resampled probabilities are also returned in the raw file's axis
order over the crop box (:class:`~autoseg.inference.probabilities.SavedProbabilities`, the
``{case}.npz`` that ensembling reads).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autoseg.cropping import uncrop
from autoseg.inference.probabilities import SavedProbabilities, labels_from_probabilities
from autoseg.planning.plans import ResamplingPlan
from autoseg.resampling import resample_probabilities
from autoseg.storage import CaseProperties


def resample_back(probs: np.ndarray, props: CaseProperties, resampling: ResamplingPlan) -> np.ndarray:
    """``(K, *shape_after_resample)`` -> ``(K, *shape_after_crop)`` float32 (step 1)."""
    return resample_probabilities(probs, props.spacing, props.spacing_after_crop, new_shape=props.shape_after_crop,
                                  order=resampling.probabilities_order, order_z=resampling.order_z_image,
                                  anisotropy_threshold=resampling.anisotropy_threshold)


def labels_at_crop(probs: np.ndarray, props: CaseProperties, resampling: ResamplingPlan,
                   regions_class_order: Sequence[int] | None) -> np.ndarray:
    """Label map ``(*shape_after_crop)`` int16 from preprocessed-grid probabilities, resampling one
    channel at a time (steps 1-2; the same labels as resampling all channels, then
    :func:`labels_from_probabilities`)."""
    return labels_on_grid(probs, props.spacing, props.spacing_after_crop, props.shape_after_crop, resampling,
                          regions_class_order)


def labels_on_grid(probs: np.ndarray, spacing: Sequence[float], new_spacing: Sequence[float],
                   new_shape: Sequence[int], resampling: ResamplingPlan,
                   regions_class_order: Sequence[int] | None) -> np.ndarray:
    """Label map ``(*new_shape)`` int16 of probabilities ``(K, *S)`` at ``spacing`` resampled to
    ``new_spacing`` (mm, the plans' axis order), one channel at a time. Also takes a ``3d_lowres``
    prediction to the cascade stage's grid (nnU-Net v2 ``resample_and_save``,
    nnunetv2/inference/export_prediction.py: probabilities resampled, then labelled)."""
    out = np.zeros(tuple(new_shape), dtype=np.int16)
    best = None
    for k in range(probs.shape[0]):
        p = resample_probabilities(probs[k:k + 1], spacing, new_spacing, new_shape=new_shape,
                                   order=resampling.probabilities_order, order_z=resampling.order_z_image,
                                   anisotropy_threshold=resampling.anisotropy_threshold)[0]
        if regions_class_order:
            out[p > 0.5] = regions_class_order[k]
        elif best is None:
            best = p
        else:
            wins = p > best
            out[wins] = k
            np.maximum(best, p, out=best)
        del p  # before the next class is resampled: two whole-volume channels alive, not three
    return out


def to_original(labels: np.ndarray, props: CaseProperties, transpose_backward: Sequence[int]) -> np.ndarray:
    """A label map in preprocessed-crop axes ``(*shape_after_crop)`` -> raw file shape ``(X, Y, Z)`` (step 3)."""
    back = labels.transpose(tuple(transpose_backward))
    return uncrop(back, props.bbox, props.original_shape)


def to_input_geometry(probs: np.ndarray, props: CaseProperties, resampling: ResamplingPlan,
                      transpose_backward: Sequence[int], regions_class_order: Sequence[int] | None,
                      keep_probabilities: bool = False) -> tuple[np.ndarray, SavedProbabilities | None]:
    """Labels in the raw file's shape ``(X, Y, Z)``, and with ``keep_probabilities`` the probabilities
    ``(K, X', Y', Z')`` in the raw file's axes over the crop box (else None)."""
    rco = tuple(regions_class_order) if regions_class_order else None
    if not keep_probabilities:
        return to_original(labels_at_crop(probs, props, resampling, rco), props, transpose_backward), None
    full = resample_back(probs, props, resampling)
    axes = (0,) + tuple(a + 1 for a in transpose_backward)
    saved = SavedProbabilities(full.transpose(axes), props.bbox, props.original_shape, rco)
    return to_original(labels_from_probabilities(full, rco), props, transpose_backward), saved
