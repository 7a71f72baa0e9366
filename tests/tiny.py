"""``tests/training/tiny_workspace.py`` for test packages outside ``tests/training`` (``from tiny import tw``).

That folder is no package, so its modules are importable only from the tests there; this loads the
module by path, once, under the same name those tests use (``tiny_workspace``)."""

import importlib.util
import sys
from pathlib import Path


def _load():
    if "tiny_workspace" in sys.modules:
        return sys.modules["tiny_workspace"]
    path = Path(__file__).parent / "training" / "tiny_workspace.py"
    spec = importlib.util.spec_from_file_location("tiny_workspace", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["tiny_workspace"] = module
    spec.loader.exec_module(module)
    return module


tw = _load()
