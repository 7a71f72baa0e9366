"""Image reading and writing: the only place in autoseg that knows file formats.

Everything returned here follows the package convention: arrays ``(X, Y, Z)`` per file (voxel
index order i, j, k), stacked to ``(C, X, Y, Z)`` for multi-channel cases; spacing in mm per axis;
``affine`` is the 4x4 voxel-to-RAS+ matrix. NIfTI goes through nibabel, NRRD/MHA/MHD (and NIfTI on
request) through SimpleITK, whose LPS geometry is converted to RAS at this edge.
"""

from autoseg.io.images import (
    SUPPORTED_ENDINGS,
    Geometry,
    ImageReadError,
    file_ending,
    read_geometry,
    read_image,
    read_volume,
    strip_ending,
    write_like,
)

__all__ = [
    "SUPPORTED_ENDINGS",
    "Geometry",
    "ImageReadError",
    "file_ending",
    "read_geometry",
    "read_image",
    "read_volume",
    "strip_ending",
    "write_like",
]
