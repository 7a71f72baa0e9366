"""Dataset fingerprint (``fingerprint.json``): spacings, shapes and foreground intensities.

Per case, after cropping all channels to the non-zero region (holes filled): spacing, shape before
and after the crop, relative size after the crop. Per channel: foreground intensity statistics
pooled over a seeded sample of label > 0 voxels of all cases. Spacings in mm, (X, Y, Z) file order.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoseg.artifacts import Artifact


@dataclass(frozen=True)
class IntensityStats:
    mean: float
    median: float
    std: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float


@dataclass(frozen=True)
class CaseFingerprint:
    case_id: str
    spacing: tuple[float, float, float]
    shape_before_crop: tuple[int, int, int]
    shape_after_crop: tuple[int, int, int]
    relative_size_after_crop: float


@dataclass(frozen=True)
class Fingerprint(Artifact):
    KIND = "fingerprint"
    SCHEMA_VERSION = 1

    dataset_name: str
    channel_names: tuple[str, ...]
    cases: tuple[CaseFingerprint, ...]
    intensity: tuple[IntensityStats, ...]  # one per channel
    foreground_samples_per_case: int
    seed: int

    @property
    def spacings(self) -> list[tuple[float, float, float]]:
        return [c.spacing for c in self.cases]

    @property
    def shapes_after_crop(self) -> list[tuple[int, int, int]]:
        return [c.shape_after_crop for c in self.cases]

    @property
    def median_relative_size_after_crop(self) -> float:
        import numpy as np

        return float(np.median([c.relative_size_after_crop for c in self.cases])) if self.cases else 1.0
