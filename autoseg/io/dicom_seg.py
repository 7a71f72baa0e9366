"""Write a label map predicted on a DICOM series back as DICOM: a Segmentation object (DICOM SEG,
written with highdicom) or an RT Structure Set (RTSTRUCT, one ROI per label, written with rt-utils).

Both reference the source series (its study, frame of reference and each slice's SOP instance),
so PACS viewers, 3D Slicer and treatment-planning systems place them on the images. ``labels`` is
``(X, Y, Z)`` in the axes :func:`autoseg.io.dicom.read_series` gives: slice ``k`` of the sorted series
is ``labels[:, :, k].T`` (rows, columns).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np

from autoseg.core.fileops import atomic_path
from autoseg.extras import require
from autoseg.io.dicom import Series
from autoseg.io.segments import Segment

MANUFACTURER = "autoseg"
SEG_SERIES_NUMBER = 900  # series numbers of written objects: high, to sort after the scanner's series
RTSTRUCT_SERIES_NUMBER = 901


def _frames(labels: np.ndarray) -> np.ndarray:
    """``(Z, rows, columns)`` frames of ``labels`` (X, Y, Z), frame k for sorted slice k."""
    return np.ascontiguousarray(labels.transpose(2, 1, 0))


def _check_shape(labels: np.ndarray, series: Series) -> None:
    rows, cols = series.slices[0].size
    if labels.shape != (cols, rows, len(series.files)):
        raise ValueError(f"{series.describe()}: label map of shape {labels.shape} does not fit the series "
                         f"({cols} columns x {rows} rows x {len(series.files)} slices)")


def write_dicom_seg(labels: np.ndarray, series: Series, segments: tuple[Segment, ...], out_path: Path,
                    algorithm: str, version: str) -> Path:
    """Write ``labels`` as a binary DICOM SEG with one segment per entry of ``segments`` (name, colour,
    category and type codes), referencing ``series``. ``algorithm`` names the model in the algorithm
    identification; empty frames are left out (highdicom's default; all kept when every frame is empty)."""
    hd = require("highdicom", "dicom", "--output-type dicom-seg")
    pydicom = require("pydicom", "dicom", "--output-type dicom-seg")
    from pydicom.sr.codedict import codes

    _check_shape(labels, series)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in series.files]
    numbered = np.zeros(labels.shape, dtype=np.uint16)  # segment numbers 1..K, as highdicom expects
    descriptions = []
    algorithm_id = hd.AlgorithmIdentificationSequence(name=algorithm[:64] or "autoseg",
                                                      family=codes.cid7162.ArtificialIntelligence, version=version)
    for number, s in enumerate(segments, start=1):
        numbered[labels == s.value] = number
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=s.name[:64],
            segmented_property_category=hd.sr.CodedConcept(s.category.value, s.category.scheme, s.category.meaning),
            segmented_property_type=hd.sr.CodedConcept(s.type.value, s.type.scheme, s.type.meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm_id,
            display_color=hd.color.CIELabColor.from_rgb(*s.color)))
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=_frames(numbered), segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm[:64] or "autoseg", software_versions=version, device_serial_number="0",
        series_description=f"{algorithm} segmentation"[:64], omit_empty_frames=True)
    with atomic_path(Path(out_path), suffix=".dcm") as tmp:
        seg.save_as(tmp)
    return Path(out_path)


def write_rtstruct(labels: np.ndarray, series: Series, segments: tuple[Segment, ...], out_path: Path,
                   algorithm: str) -> Path:
    """Write ``labels`` as an RTSTRUCT with one ROI per segment (contours traced on every slice by
    rt-utils, not approximated, so they follow the voxel borders), referencing ``series``."""
    rt_utils = require("rt_utils", "dicom", "--output-type rtstruct")
    _check_shape(labels, series)
    with tempfile.TemporaryDirectory(prefix="autoseg-rtstruct-") as tmp:
        # rt-utils loads every image file under a folder: give it this series alone
        for k, path in enumerate(series.files):
            os.symlink(Path(path).resolve(), Path(tmp) / f"{k:05d}.dcm")
        with contextlib.redirect_stdout(io.StringIO()):  # rt-utils prints notes (e.g. empty masks)
            rtstruct = rt_utils.RTStructBuilder.create_new(dicom_series_path=tmp)
            rtstruct.set_series_description(f"{algorithm} contours"[:64])
            rtstruct.ds.SeriesNumber = RTSTRUCT_SERIES_NUMBER
            rtstruct.ds.Manufacturer = MANUFACTURER
            for s in segments:
                mask = labels == s.value  # rt-utils masks are (columns, rows, slices) = our (X, Y, Z)
                rtstruct.add_roi(mask=mask, color=list(s.color), name=s.name, approximate_contours=False)
    with atomic_path(Path(out_path), suffix=".dcm") as tmp_out:
        rtstruct.ds.save_as(tmp_out, enforce_file_format=True)
    return Path(out_path)
