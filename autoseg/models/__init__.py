"""Segmentation networks, looked up by name in :data:`autoseg.models.registry.ARCHITECTURES`."""

from autoseg.models.architecture import Architecture, ModelError
from autoseg.models.registry import ARCHITECTURES, build_model, get_architecture

__all__ = ["ARCHITECTURES", "Architecture", "ModelError", "build_model", "get_architecture"]
