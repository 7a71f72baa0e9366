"""Output types of ``predict`` (``--output-type``): the file each case's label map is written as.

=============  ==================  ======================================================================
type           file                written by
=============  ==================  ======================================================================
nifti          ``{case}.nii.gz``   nibabel, geometry of the input (header copied from a NIfTI input)
nrrd           ``{case}.nrrd``     SimpleITK, geometry of the input
seg.nrrd       ``{case}.seg.nrrd`` pynrrd, 3D Slicer segmentation (names, colours, terminology per label)
dicom-seg      ``{case}.seg.dcm``  highdicom, DICOM SEG referencing the source series (DICOM input only)
rtstruct       ``{case}.rtstruct.dcm``  rt-utils, RT Structure Set, one ROI per label (DICOM input only)
=============  ==================  ======================================================================

Default (no ``--output-type``): the input file's own format and ending for image files, ``nifti`` for
DICOM input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.io import dicom_seg, read_volume, write_like
from autoseg.io.dicom import Series
from autoseg.io.seg_nrrd import write_seg_nrrd
from autoseg.io.segments import Segment

OUTPUT_TYPES = ("nifti", "nrrd", "seg.nrrd", "dicom-seg", "rtstruct")
ENDINGS = {"nifti": ".nii.gz", "nrrd": ".nrrd", "seg.nrrd": ".seg.nrrd", "dicom-seg": ".seg.dcm",
           "rtstruct": ".rtstruct.dcm"}
DICOM_ONLY = ("dicom-seg", "rtstruct")


class OutputTypeError(ValueError):
    """An output type that cannot be written for a case (e.g. DICOM SEG from a NIfTI input)."""


def output_ending(output_type: str | None, input_ending: str, dicom: bool) -> str:
    """The ending of a case's label-map file: ``output_type``'s, else the input's (``.nii.gz`` for DICOM)."""
    if output_type is None:
        return ENDINGS["nifti"] if dicom else input_ending
    if output_type not in ENDINGS:
        raise OutputTypeError(f"--output-type {output_type}: unknown; choose one of {', '.join(OUTPUT_TYPES)}")
    return ENDINGS[output_type]


def output_problem(output_type: str | None, dicom: bool) -> str:
    """Why ``output_type`` cannot be written for a case (DICOM outputs need a DICOM input), or ''."""
    if output_type in DICOM_ONLY and not dicom:
        return (f"--output-type {output_type} needs a DICOM series as input (it references the source images); "
                "this case is an image file: predict it in a run with --output-type nifti, nrrd or seg.nrrd")
    return ""


@dataclass(frozen=True)
class OutputContext:
    """What the writers of described formats need besides the label map."""

    segments: tuple[Segment, ...]
    algorithm: str  # the model, as named in DICOM objects
    version: str  # autoseg's version


def write_output(label_file: Path, reference: Path, out_path: Path, output_type: str | None,
                 series: Series | None, context: OutputContext) -> Path:
    """Write the label map ``label_file`` (predicted on the image file ``reference``) to ``out_path``
    as ``output_type`` (None: the ending of ``out_path`` decides, as for nifti/nrrd)."""
    labels, geometry = read_volume(label_file)
    labels = np.asarray(labels)
    if output_type == "seg.nrrd":
        return write_seg_nrrd(labels, geometry, context.segments, out_path)
    if output_type in DICOM_ONLY:
        if series is None:
            raise OutputTypeError(output_problem(output_type, dicom=False))
        if output_type == "dicom-seg":
            return dicom_seg.write_dicom_seg(labels, series, context.segments, out_path, context.algorithm,
                                             context.version)
        return dicom_seg.write_rtstruct(labels, series, context.segments, out_path, context.algorithm)
    return write_like(labels, reference, out_path)
