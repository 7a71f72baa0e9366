"""The package version, in the bottom layer so that every layer may record it (checkpoints, exports)."""

__version__ = "0.1.0"
