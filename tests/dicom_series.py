"""Synthetic DICOM series for the tests (pydicom): a CT series with exact geometry, and non-image objects.

``volume`` is ``(X, Y, Z)`` = (column, row, slice): slice ``k`` is ``volume[:, :, k].T`` (rows, columns) at
``ImagePositionPatient = origin + k * slice_spacing * (row_dir x col_dir)`` (LPS, mm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def oblique_orientation(angle: float = 0.3) -> tuple[float, ...]:
    """Row and column directions rotated by ``angle`` about the z axis and tilted about x."""
    c, s = np.cos(angle), np.sin(angle)
    row = np.array([c, s, 0.0])
    col = np.array([-s * np.cos(0.2), c * np.cos(0.2), np.sin(0.2)])
    return tuple(float(v) for v in (*row, *col))


def _base(study: dict, modality: str, sop_class: str, series_uid: str, number: int, description: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Patient", "P001", "19700101", "O"
    ds.StudyInstanceUID = study["study_uid"]
    ds.StudyID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "1", "20260101", "120000", "A1"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = modality, series_uid, number
    ds.SeriesDescription = description
    ds.Manufacturer = "autoseg tests"
    return ds


def write_series(folder: Path, volume: np.ndarray, spacing=(0.8, 0.7, 2.5), origin=(-30.0, -20.0, 10.0),
                 orientation=AXIAL, number: int = 1, description: str = "CT", modality: str = "CT",
                 study: dict | None = None, intercept: float = -1024.0, skip_slices=(), positions=None) -> list[Path]:
    """Write ``volume`` (X, Y, Z) as one file per slice into ``folder``; returns the files (shuffled
    names, so readers must sort by position). ``spacing`` = (column spacing, row spacing, slice gap)."""
    study = study or new_study()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    normal = np.cross(orientation[:3], orientation[3:])
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    stored = np.asarray(np.round(volume - intercept), dtype=np.int16)
    files, order = [], np.random.default_rng(number).permutation(volume.shape[2])
    for k in range(volume.shape[2]):
        if k in skip_slices:
            continue
        ds = _base(study, modality, sop_class, series_uid, number, description)
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = study["frame_uid"], ""
        ds.InstanceNumber = k + 1
        position = np.asarray(origin) + k * spacing[2] * normal if positions is None else positions[k]
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = list(orientation)
        ds.PixelSpacing = [spacing[1], spacing[0]]  # (row spacing, column spacing)
        ds.SliceThickness = spacing[2]
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, 1.0, "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        path = folder / f"IM{order[k]:04d}_{number}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
    return files


def write_sr(folder: Path, study: dict | None = None, number: int = 99) -> Path:
    """A non-image object (Basic Text SR) in its own series."""
    study = study or new_study()
    ds = _base(study, "SR", BASIC_TEXT_SR, generate_uid(), number, "dose report")
    ds.InstanceNumber = 1
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / f"SR{number}.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def new_study() -> dict:
    return {"study_uid": generate_uid(), "frame_uid": generate_uid()}


def lps_affine(volume_shape, spacing, origin, orientation) -> np.ndarray:
    """The voxel (X, Y, Z) -> RAS affine the series should read as."""
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, col)
    lps = np.eye(4)
    lps[:3, :3] = np.stack([row * spacing[0], col * spacing[1], normal * spacing[2]], axis=1)
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
