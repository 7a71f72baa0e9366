"""Optional dependencies (the extras of pyproject.toml): import one, or say how to install it.

autoseg's PyPI name belongs to another project, so the install command is always the one for a
checkout (``pip install -e '.[<extra>]'``), never one that names the package on PyPI.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ValueError):
    """An optional package is not installed; the message gives the exact install command."""


def install_command(extra: str) -> str:
    return f"pip install -e '.[{extra}]'"


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. ``"highdicom"``) or raise :class:`MissingExtraError` naming ``purpose``
    (what needed it) and the command that installs the extra, run in the autoseg checkout."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(f"{purpose} needs the Python package '{module.split('.')[0]}', which is not installed "
                                f"({e}); install it from the autoseg checkout with: {install_command(extra)}") from None
