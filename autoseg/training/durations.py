"""Durations as users write them for ``--time-budget`` (``90m``, ``8h``, ``2d``, ``1h30m``), and back.

Kept apart from :mod:`autoseg.training.budget` so that parsing the command line imports no torch."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class BudgetError(ValueError):
    """A time budget that cannot be met or read; the message says what to give instead."""


def parse_duration(text: str) -> float:
    """Seconds in ``90m``, ``8h``, ``2d``, ``1h30m``, ``45s`` or a plain number of seconds."""
    t = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        seconds = float(t)
    elif re.fullmatch(r"(\d+(\.\d+)?[smhd])+", t):
        seconds = sum(float(n) * _UNITS[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)([smhd])", t))
    else:
        raise BudgetError(f"--time-budget '{text}' is not a duration: write e.g. 90m, 8h, 2d, 1h30m or 45s")
    if not seconds > 0:
        raise BudgetError(f"--time-budget '{text}' must be longer than 0")
    return seconds


def format_duration(seconds: float) -> str:
    """``1h 05m``, ``12m 30s``, ``45s``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"
