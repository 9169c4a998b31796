"""The package's import graph, from the AST of its modules (imports inside functions included): no cycle
between spark_cleora modules, and no module imports a layer above its own (see docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "spark_cleora"

#: layers, lowest first: a module may import its own layer and the ones below, never one above. The
#: longest matching prefix decides a module's layer; every module must have one.
LAYERS: dict[str, int] = {
    # the foundation: the environment and the session, the options' types, the errors
    "spark_cleora.runtime": 0, "spark_cleora.config": 0, "spark_cleora.errors": 0, "spark_cleora._version": 0,
    "spark_cleora.storage": 1,  # paths, readers, the output rules, catalog tables
    "spark_cleora.engine": 2,  # Cleora: graph, start vectors, both engines, the embedding pipeline, fold-in
    # EMDE on top of embeddings; the Spark ML stages of embed (EMDE's build on them)
    "spark_cleora.emde": 3, "spark_cleora.ml": 3,
    # the embed job, the demo, neighbours and the projection, the shared CLI options
    "spark_cleora.job": 4, "spark_cleora.demo": 4, "spark_cleora.similar": 4, "spark_cleora.explore": 4,
    "spark_cleora.options": 4,
    "spark_cleora.evaluate": 5,  # quality evaluations
    "spark_cleora.cli": 6,  # the command line
    "spark_cleora": 7,  # the package's public names
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "__main__.py"}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The spark_cleora modules ``name`` imports (``from x import y`` counts as x.y when that is a module)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "spark_cleora")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "spark_cleora":
                continue
            for a in node.names:
                out.add(f"{target}.{a.name}" if f"{target}.{a.name}" in known else target)
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def layer(name: str) -> int:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "."):
            return LAYERS[prefix]
    raise AssertionError(f"{name} has no layer: add it to LAYERS in tests/test_layout.py")


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_module_imports_a_layer_above_its_own():
    g = graph()
    upward = [f"{a} ({layer(a)}) imports {b} ({layer(b)})" for a in sorted(g) for b in sorted(g[a])
              if b in g and layer(b) > layer(a)]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_every_module_has_a_layer():
    for name in modules():
        layer(name)


@pytest.mark.parametrize("source, expected", [
    # the checks themselves: a cycle through a function-level import, and an upward import
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_cycles_are_found(source, expected):
    assert cycles(source) == expected


def test_function_level_imports_count(tmp_path):
    (tmp_path / "engine").mkdir()
    f = tmp_path / "engine" / "x.py"
    f.write_text("def f():\n    from ..cli import main\n    from . import y\n    from .. import config\n")
    known = {"spark_cleora.cli", "spark_cleora.engine.y", "spark_cleora.config"}
    assert imports_of("spark_cleora.engine.x", f, known) == known
    assert layer("spark_cleora.cli") > layer("spark_cleora.engine.x")  # so the layer test would refuse it
