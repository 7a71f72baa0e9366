"""Typed JSON artifacts: frozen dataclasses that round-trip through JSON with a schema version.

Every artifact a stage writes (fingerprint.json, plans.json, splits.json, ...) is a frozen dataclass
deriving from :class:`Artifact`. ``save`` writes atomically (temporary file in the same folder, then
``os.replace``), ``load`` validates the schema name and version before building the object, so a
stale or foreign file gives a clear message instead of a ``KeyError`` deep inside a later stage.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

# File operations live in autoseg.core.fileops; these names stay importable from here for code
# written before they moved.
from autoseg.core.fileops import (  # noqa: F401
    OutputFolderError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_with,
    ensure_writable_dir,
    exchange_paths,
    replace_folder,
    staged_folder,
    writing_into,
)

from autoseg import jsonfiles

T = TypeVar("T", bound="Artifact")


class ArtifactError(ValueError):
    """An artifact file is missing, unreadable, of another kind or of an unknown schema version."""


def _to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    return value


def _from_jsonable(tp: Any, value: Any) -> Any:
    """Build a value of type ``tp`` from its JSON form (dataclasses, tuples, lists, dicts, unions)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or value is None:
        return value
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        for a in non_none:
            try:
                return _from_jsonable(a, value)
            except (TypeError, ValueError, KeyError):
                continue
        raise TypeError(f"value {value!r} matches none of {args}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TypeError(f"expected an object for {tp.__name__}, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if not f.init:
                continue
            if f.name in value:
                kwargs[f.name] = _from_jsonable(hints[f.name], value[f.name])
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise KeyError(f"missing key '{f.name}' for {tp.__name__}")
        return tp(**kwargs)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_jsonable(args[0], v) for v in value)
        if args and len(args) != len(value):
            raise TypeError(f"expected {len(args)} items, got {len(value)}")
        return tuple(_from_jsonable(a, v) for a, v in zip(args, value)) if args else tuple(value)
    if origin is list:
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        return [_from_jsonable(args[0], v) for v in value] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, got {type(value).__name__}")
        kt, vt = args if args else (Any, Any)
        return {_from_jsonable(kt, k) if kt is not str else k: _from_jsonable(vt, v) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.lstrip("-").isdigit():
                return int(value)
            raise TypeError(f"expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value
    return value


@dataclasses.dataclass(frozen=True)
class Artifact:
    """Base class of JSON artifacts. Subclasses set ``KIND`` and ``SCHEMA_VERSION``."""

    KIND: ClassVar[str] = "artifact"
    SCHEMA_VERSION: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        body = _to_jsonable(self)
        return {"kind": self.KIND, "schema_version": self.SCHEMA_VERSION, **body}

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any], source: str = "<dict>") -> T:
        if not isinstance(data, dict):
            raise ArtifactError(f"{source}: expected a JSON object for {cls.KIND}")
        kind = data.get("kind")
        if kind != cls.KIND:
            raise ArtifactError(f"{source}: is a '{kind}' file, expected '{cls.KIND}'")
        version = data.get("schema_version")
        if version != cls.SCHEMA_VERSION:
            raise ArtifactError(
                f"{source}: {cls.KIND} has schema version {version}, this autoseg reads version "
                f"{cls.SCHEMA_VERSION}; rerun the command that writes it (e.g. `autoseg plan`)"
            )
        body = {k: v for k, v in data.items() if k not in ("kind", "schema_version")}
        try:
            return _from_jsonable(cls, body)
        except (TypeError, KeyError, ValueError) as e:
            raise ArtifactError(f"{source}: invalid {cls.KIND}: {e}; rerun the command that writes it "
                                "(e.g. `autoseg plan`)") from None

    def save(self, path: Path, durable: bool = True) -> Path:
        """Write atomically (``durable=False``: without fsync, see :func:`atomic_write_with`)."""
        atomic_write_json(Path(path), self.to_dict(), durable)
        return Path(path)

    @classmethod
    def load(cls: type[T], path: Path) -> T:
        path = Path(path)
        if path.is_dir():
            raise ArtifactError(f"{path}: is a folder; give the {cls.KIND} JSON file")
        if not path.is_file():
            raise ArtifactError(f"{path}: not found")
        try:
            data = jsonfiles.loads(path.read_text(), path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ArtifactError(f"{path}: cannot be read as JSON ({e}); delete it and rerun") from None
        return cls.from_dict(data, source=str(path))
