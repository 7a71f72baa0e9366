"""What each label of a label map is, for formats that describe their segments (DICOM SEG, RTSTRUCT,
Slicer ``.seg.nrrd``): name, value in the label map, display colour and coded meaning.

Names and values come from ``dataset.json`` ``labels`` (regions: the value ``regions_class_order``
paints them with). Colours and codes may be given in an optional ``dataset.json`` key::

    "segment_descriptions": {
        "liver": {"color": [221, 130, 101],
                  "category": ["SCT", "123037004", "Anatomical Structure"],
                  "type": ["SCT", "10200004", "Liver"]}
    }

(codes as [coding scheme, code value, code meaning], e.g. from the DICOM CID 7150/7151 lists). A label
without an entry gets the next colour of :data:`PALETTE` and the generic code "Tissue" (SNOMED CT
85756007) for both category and type, which is 3D Slicer's default for a new segment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

DESCRIPTIONS_KEY = "segment_descriptions"
TISSUE = ("SCT", "85756007", "Tissue")
# First colours of 3D Slicer's GenericAnatomyColors table (tissue, bone, skin, connective tissue, blood,
# organ, mass, muscle, foreign object, waste, teeth, fat, grey matter, white matter).
PALETTE = ((128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79), (221, 130, 101),
           (144, 238, 144), (192, 104, 88), (220, 245, 20), (78, 63, 0), (255, 250, 220), (230, 220, 70),
           (200, 200, 235), (250, 250, 210))


class LabelSpec(Protocol):
    """The labels of a dataset, as :class:`autoseg.dataset.DatasetSpec` holds them (this module is part of
    the image-format layer, below the dataset, so it names only what it reads)."""

    labels: Mapping[str, Any]  # name -> class value, or list of values for a region
    regions_class_order: Sequence[int] | None

    @property
    def has_regions(self) -> bool: ...


class SegmentDescriptionError(ValueError):
    """``segment_descriptions`` in dataset.json is malformed; the message names the entry."""


@dataclass(frozen=True)
class Code:
    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class Segment:
    """One label: its value in the label map, name, RGB colour (0-255) and coded category and type."""

    value: int
    name: str
    color: tuple[int, int, int]
    category: Code = Code(*TISSUE)
    type: Code = Code(*TISSUE)


def _code(raw: Any, where: str) -> Code:
    if not (isinstance(raw, (list, tuple)) and len(raw) == 3 and all(isinstance(x, str) and x for x in raw)):
        raise SegmentDescriptionError(f"{where}: give a code as [coding scheme, code value, code meaning] strings, "
                                      f"e.g. [\"SCT\", \"10200004\", \"Liver\"]; got {raw!r}")
    return Code(*raw)


def _color(raw: Any, where: str) -> tuple[int, int, int]:
    if not (isinstance(raw, (list, tuple)) and len(raw) == 3 and all(isinstance(x, int) and 0 <= x <= 255
                                                                       for x in raw)):
        raise SegmentDescriptionError(f"{where}: give a colour as [red, green, blue] integers 0-255; got {raw!r}")
    return (raw[0], raw[1], raw[2])


def label_values(spec: LabelSpec) -> list[tuple[str, int]]:
    """(name, value in the written label map) of every foreground label, in dataset.json order."""
    if spec.has_regions:
        names = [n for n in spec.labels if n not in ("background", "ignore")]
        order = tuple(spec.regions_class_order or ())
        return [(n, int(order[k])) for k, n in enumerate(names) if k < len(order)]
    return [(n, int(v)) for n, v in spec.labels.items() if n not in ("background", "ignore") and v != 0]


def segments_of(spec: LabelSpec, descriptions: dict[str, Any] | None = None, source: str = "dataset.json"
                ) -> tuple[Segment, ...]:
    """The segments of ``spec``'s labels, with colours and codes from ``descriptions`` (the optional
    ``segment_descriptions`` of dataset.json) where given."""
    descriptions = descriptions or {}
    if not isinstance(descriptions, dict):
        raise SegmentDescriptionError(f"{source}: '{DESCRIPTIONS_KEY}' must map label names to objects")
    names = dict(label_values(spec))
    unknown = sorted(set(descriptions) - set(names))
    if unknown:
        raise SegmentDescriptionError(f"{source}: '{DESCRIPTIONS_KEY}' names label(s) {unknown} that are not in "
                                      f"'labels' ({', '.join(names)})")
    out = []
    for k, (name, value) in enumerate(label_values(spec)):
        entry = descriptions.get(name, {})
        where = f"{source}: {DESCRIPTIONS_KEY}.{name}"
        if not isinstance(entry, dict):
            raise SegmentDescriptionError(f"{where}: must be an object with color/category/type")
        color = _color(entry["color"], where + ".color") if "color" in entry else PALETTE[k % len(PALETTE)]
        category = _code(entry["category"], where + ".category") if "category" in entry else Code(*TISSUE)
        kind = _code(entry["type"], where + ".type") if "type" in entry else Code(*TISSUE)
        out.append(Segment(value=value, name=name, color=color, category=category, type=kind))
    return tuple(out)
