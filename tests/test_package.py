"""The finetox package's shape: which of its modules import which, imports inside functions included."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workflow" / "finetox"


def import_graph(package: Path) -> dict[str, set[str]]:
    """Each module of `package` (dotted, from the package's name) and the modules of the package it imports,
    at module level or inside a function: a lazy import is still a dependency of the module."""
    root = package.name
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == root:
                # `from finetox import tables` imports the module finetox.tables
                imported |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names if a.name.split(".")[0] == root}
        graph[name] = {m for m in imported if m in modules and m not in (name, root)}
    return graph


def test_the_package_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert {"finetox.data", "finetox.preference", "finetox.mixes", "finetox.levers.guard"} <= set(graph)
    assert "finetox.data" in graph["finetox.preference"]  # (a lazy import is seen: data's readers)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle in finetox: {' -> '.join(error.args[1])}")


def test_the_cycle_check_sees_an_import_inside_a_function(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import thing\n")
    (package / "b.py").write_text("def thing():\n    from pkg import a\n    return a\n")
    graph = import_graph(package)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(graph).prepare()
