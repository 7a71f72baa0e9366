"""autoseg: a self-configuring segmentation pipeline for 3D medical volumes.

Axis convention used everywhere inside the package: arrays are ``(C, X, Y, Z)`` (channels first,
then voxel index axes i, j, k exactly as nibabel returns them), spacings are in mm per axis in the
same order, affines are 4x4 voxel-to-RAS+ (nibabel convention). Readers for other formats convert
to this convention at the edge (``autoseg.io``).
"""

from autoseg.core.version import __version__  # noqa: F401  (the package's version, kept in core)


def __getattr__(name: str):
    """``from autoseg import Segmenter`` imports the inference stack (PyTorch) only when asked for, so
    ``import autoseg`` stays light."""
    if name == "Segmenter":
        from autoseg.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'autoseg' has no attribute '{name}'")
