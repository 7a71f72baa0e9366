"""Learning-rate schedule: nnU-Net's polynomial decay, as a pure function of the epoch."""

from __future__ import annotations

POLY_EXPONENT = 0.9  # nnU-Net v2 PolyLRScheduler default


def poly_lr(epoch: int, max_epochs: int, initial: float, exponent: float = POLY_EXPONENT) -> float:
    """Learning rate for ``epoch`` (0-based) of ``max_epochs``: ``initial * (1 - epoch / max_epochs) ** exponent``."""
    if max_epochs <= 0:
        raise ValueError(f"max_epochs must be positive, got {max_epochs}")
    if not 0 <= epoch <= max_epochs:
        raise ValueError(f"epoch {epoch} is outside 0..{max_epochs}")
    return initial * (1 - epoch / max_epochs) ** exponent
