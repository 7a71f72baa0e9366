"""The package's layers: no module imports a higher layer, and no modules import each other in a circle.

The layer table is written once, in ``docs/architecture.md`` (the ```` ```layers ```` block, top layer
first); every ``import`` in ``autoseg/`` is read with :mod:`ast`, at module level and inside
functions alike (an import inside a function still ties the two modules together).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "autoseg"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def read_layers(text: str) -> dict[str, tuple[int, str]]:
    """``{module prefix: (rank, layer name)}`` from the ```` ```layers ```` block; rank 0 is the bottom."""
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    if block is None:
        raise AssertionError(f"{ARCHITECTURE}: no ```layers block")
    rows = [line.split(":", 1) for line in block.group(1).splitlines() if line.strip()]
    table = {}
    for rank, (name, prefixes) in enumerate(reversed(rows)):
        for prefix in prefixes.split():
            assert prefix not in table, f"{prefix} is listed twice in the layer table"
            table[prefix] = (rank, name.strip())
    return table


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str, table: dict[str, tuple[int, str]]) -> tuple[int, str] | None:
    """The entry naming the module or its closest enclosing package; the root package ``autoseg``
    covers only itself, so a new top-level module has no layer until it is added to the table."""
    parts = module.split(".")
    if len(parts) == 1:
        return table.get(module)
    for k in range(len(parts), 1, -1):
        hit = table.get(".".join(parts[:k]))
        if hit is not None:
            return hit
    return None


def imports(path: Path, known: set[str], package: Path = PACKAGE) -> list[tuple[str, int, bool]]:
    """``(imported autoseg module, line, inside a function)`` for every import of ``path``.
    ``from pkg import sub`` counts as importing ``pkg.sub`` when that is a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
    own = module_name(path, package)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            targets = subs if len(subs) == len(node.names) else subs + [base]
        for t in targets:
            if t == "autoseg" or t.startswith("autoseg."):
                while t not in known and "." in t:  # `import autoseg.x.y` of a name, not a module
                    t = t.rpartition(".")[0]
                found.append((t, node.lineno, id(node) in in_function))
    return found


def import_graph() -> dict[str, list[tuple[str, int, bool]]]:
    mods = modules()
    return {m: imports(p, set(mods)) for m, p in mods.items()}


def layer_violations(graph, table) -> list[str]:
    """``module:line imports target`` for each import of a higher layer (and modules with no layer)."""
    out = []
    for module, edges in sorted(graph.items()):
        own = layer_of(module, table)
        if own is None:
            out.append(f"{module} has no layer: add it to the ```layers table in docs/architecture.md")
            continue
        for target, line, inside in edges:
            theirs = layer_of(target, table)
            if theirs is not None and theirs[0] > own[0]:
                where = "inside a function" if inside else "at module level"
                out.append(f"{module}:{line} ({own[1]}) imports {target} ({theirs[1]}) {where}")
    return out


def cycles(graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in {t for t, _, _ in graph.get(v, ()) if t != v}:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def package_init_edges(graph) -> dict:
    """The graph without edges from a package's ``__init__`` to its own submodules: a package that
    re-exports its modules (``autoseg.models``) is not in a circle with a submodule that imports a
    sibling through it; such an import is still checked for its layer."""
    return {m: [e for e in edges if not e[0].startswith(m + ".")] for m, edges in graph.items()}


def test_layer_table_covers_the_package():
    table = read_layers(ARCHITECTURE.read_text())
    missing = [m for m in modules() if layer_of(m, table) is None]
    assert not missing, f"modules without a layer (add them to docs/architecture.md): {missing}"
    unknown = [p for p in table if p != "autoseg" and p not in modules()]
    assert not unknown, f"the layer table names modules that do not exist: {unknown}"


def test_no_module_imports_a_higher_layer():
    problems = layer_violations(import_graph(), read_layers(ARCHITECTURE.read_text()))
    assert not problems, "imports of a higher layer:\n" + "\n".join(problems)


def test_no_import_cycles():
    found = cycles(package_init_edges(import_graph()))
    assert not found, "modules that import each other in a circle:\n" + "\n".join(" <-> ".join(c) for c in found)


# --- the checks themselves can fail ----------------------------------------------------------------

TABLE = "```layers\nhigh: autoseg.high\nlow: autoseg autoseg.low\n```\n"


def test_an_upward_import_inside_a_function_is_found():
    graph = {"autoseg.low": [("autoseg.high", 3, True)], "autoseg.high": [("autoseg.low", 1, False)]}
    problems = layer_violations(graph, read_layers(TABLE))
    assert problems == ["autoseg.low:3 (low) imports autoseg.high (high) inside a function"]


def test_a_new_module_gets_its_package_layer_and_an_unlisted_top_level_module_none():
    table = read_layers(TABLE)
    assert layer_of("autoseg.high.new_module", table) == (1, "high")
    assert layer_of("autoseg.unlisted", table) is None
    assert layer_of("autoseg", table) == (0, "low")


def test_a_cycle_is_found():
    graph = {"autoseg.a": [("autoseg.b", 1, True)], "autoseg.b": [("autoseg.c", 1, False)],
             "autoseg.c": [("autoseg.a", 1, False)], "autoseg.d": [("autoseg.a", 1, False)]}
    assert cycles(graph) == [["autoseg.a", "autoseg.b", "autoseg.c"]]


@pytest.mark.parametrize("source, expected", [
    ("from autoseg.inference import probabilities\n", "autoseg.inference.probabilities"),
    ("import autoseg.inference.sliding as s\n", "autoseg.inference.sliding"),
    ("def f():\n    from ..training.trainer import fit\n", "autoseg.training.trainer"),
])
def test_imports_are_resolved_to_modules(tmp_path, source, expected):
    path = tmp_path / "autoseg" / "inference" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text(source)
    known = {"autoseg.inference", "autoseg.inference.probabilities", "autoseg.inference.sliding",
             "autoseg.training.trainer", "autoseg.training"}
    assert [t for t, _, _ in imports(path, known, tmp_path / "autoseg")] == [expected]
