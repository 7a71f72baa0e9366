"""Segmentation networks, looked up by name in :data:`autoseg.models.registry.MODELS`."""

from autoseg.models.nnunet import build_nnunet
from autoseg.models.registry import MODELS, ModelError, build_model, get_builder

MODELS["nnunet"] = build_nnunet  # models imported from nnU-Net v2 (`autoseg import`); not trainable

__all__ = ["MODELS", "ModelError", "build_model", "get_builder"]
