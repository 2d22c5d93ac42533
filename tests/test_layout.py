"""The package's shape: layers that import only downwards, no cycles, small modules.

Every import counts, at module level, inside a function or under ``TYPE_CHECKING``: a cycle
hidden by a function-level import is still a cycle. The package's ``__init__`` is the public
facade (it imports lazily from every layer) and is the one exception.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ceranubis_jupyter

PACKAGE = Path(ceranubis_jupyter.__file__).parent
NAME = "ceranubis_jupyter"
# What each layer may import (besides itself). ``errors`` is the root every layer shares;
# ``exits`` (the one exit path) serves the client-side layers.
ALLOWED = {
    "errors": set(),
    "exits": set(),
    "wire": {"errors"},
    "node": {"wire", "errors"},
    "cluster": {"wire", "errors", "exits"},
    "projects": {"cluster", "wire", "errors", "exits"},
    "jupyter": {"projects", "cluster", "wire", "errors", "exits"},
    "daemon": {"projects", "cluster", "node", "wire", "errors", "exits"},
    "cli": {"jupyter", "daemon", "projects", "cluster", "wire", "errors", "exits"},
}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 40
# A function may run longer only when it says why, in a comment with this tag.
LONG_TAG = "# long:"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _targets(module: str, is_package: bool, node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = module.split(".")
        base = base[: len(base) - node.level + (1 if is_package else 0)]
        stem = ".".join([*base, node.module] if node.module else base)
    else:
        stem = node.module or ""
    return [stem, *(f"{stem}.{alias.name}" for alias in node.names)]


def _imports() -> dict[str, set[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        is_package = path.name == "__init__.py"
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                found |= {t for t in _targets(name, is_package, node) if t in modules}
        edges[name] = found - {name}
    return edges


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_every_module_belongs_to_a_layer() -> None:
    layers = {_layer(m) for m in _modules() if m != NAME}
    assert layers <= set(ALLOWED), f"modules outside the known layers: {layers - set(ALLOWED)}"


def test_no_import_cycles() -> None:
    assert _cycles(_imports()) == []


def test_imports_point_down_only() -> None:
    wrong = []
    for module, targets in _imports().items():
        if module == NAME:
            continue
        layer = _layer(module)
        for target in targets:
            other = _layer(target)
            if other != layer and other not in ALLOWED[layer]:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_the_checks_can_fail() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycles(edges) == [["a", "b", "c"]]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_modules_are_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path} has {lines} lines"


def _long_functions(path: Path) -> list[str]:
    source = path.read_text()
    lines = source.splitlines()
    long = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = min([d.lineno for d in node.decorator_list] + [node.lineno])
            body = lines[start - 1 : node.end_lineno]
            if len(body) > MAX_FUNCTION_LINES and not any(LONG_TAG in line for line in body):
                long.append(f"{path.name}:{node.lineno} {node.name} ({len(body)} lines)")
    return long


def test_functions_are_short_or_say_why() -> None:
    long = [entry for path in sorted(PACKAGE.rglob("*.py")) for entry in _long_functions(path)]
    assert long == []
