"""Reading JSON that people write or edit (dataset.json, splits, plans.json, model manifests).

Python's ``json`` keeps the last of two equal keys in one object without a word
(``{"labels": {...}, "labels": {...}}``), so a hand-edited file can silently lose a label or a
setting. :func:`loads` parses with an ``object_pairs_hook`` that sees every key and reports each
duplicated one as a :class:`DuplicateKeyWarning` naming the file, the key and its values; the last
value is used, as every JSON reader does (RFC 8259 section 4 leaves duplicate names undefined).

:class:`InputWarning` is the base of every "unusual but usable input" warning autoseg emits
(duplicate keys here, dataset problems in :mod:`autoseg.integrity`); the command line prints each
as one ``warning: ...`` line.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

_SHOWN_CHARS = 60  # a duplicated key's values are shown up to this many characters each


class InputWarning(UserWarning):
    """Something unusual but usable in the input; the message names the file and what to check."""


class DuplicateKeyWarning(InputWarning):
    """A JSON object holds the same key more than once (only the last value is used)."""


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def parse(text: str) -> tuple[Any, list[tuple[str, list[Any]]]]:
    """The parsed ``text`` and ``(key, values in file order)`` for every key that occurs more than once
    in one object (raises :class:`json.JSONDecodeError` like :func:`json.loads`)."""
    found: list[tuple[str, list[Any]]] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, list[Any]] = {}
        for key, value in pairs:
            seen.setdefault(key, []).append(value)
        found.extend((k, v) for k, v in seen.items() if len(v) > 1)
        return dict(pairs)

    return json.loads(text, object_pairs_hook=hook), found


def loads(text: str | bytes, source: Path | str) -> Any:
    """Parse ``text`` (the contents of ``source``) like :func:`json.loads`, warning once per
    duplicated key with a :class:`DuplicateKeyWarning`."""
    data, found = parse(text)
    for key, values in found:
        shown = ", ".join(_short(v) for v in values)
        warnings.warn(f"{source}: key '{key}' appears {len(values)} times in one object ({shown}); only the last "
                      "is used: remove the others", DuplicateKeyWarning, stacklevel=2)
    return data
