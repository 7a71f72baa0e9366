"""Segmentation networks, looked up by name in :data:`autoseg.models.registry.MODELS`."""

from autoseg.models.registry import MODELS, ModelError, build_model, get_builder

__all__ = ["MODELS", "ModelError", "build_model", "get_builder"]
