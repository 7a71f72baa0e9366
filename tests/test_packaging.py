"""The wheel's contents: pyproject.toml lists packages explicitly (the planner presets in the
top-level planners/ folder install as ``autoseg.planners``), so a new subpackage must be added there."""

from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "autoseg").rglob("__init__.py")}
    assert on_disk <= set(config["packages"]), f"add to [tool.setuptools] packages: {on_disk - set(config['packages'])}"
    assert config["package-dir"]["autoseg.planners"] == "planners"
    assert config["package-data"]["autoseg.planners"] == ["*.toml"]
    assert sorted(p.stem for p in (ROOT / "planners").glob("*.toml"))  # presets exist to ship
