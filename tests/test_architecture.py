"""The shape of the package, checked from its source: sizes, import circles, what may import what.

These checks read the code (ast), they run nothing of it except the last one, which imports ``workbench`` in a
fresh interpreter to see which heavy libraries come with it.
"""

from __future__ import annotations

import ast
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"
MAX_FILE_LINES = 600
MAX_FILES_OVER_400 = 5
MAX_MEDIAN_FILE_LINES = 250
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


SOURCES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES: dict[str, ast.Module] = {name: ast.parse(path.read_text()) for name, path in SOURCES.items()}


def _is_package(name: str) -> bool:
    return SOURCES[name].name == "__init__.py"


def _resolve_from(name: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = name.split(".") if _is_package(name) else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(name: str) -> set[str]:
    """The workbench modules ``name`` imports (at any depth of its code, type-checking imports included: a circle
    of annotations is a circle of the design), submodules resolved."""
    tree = TREES[name]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "workbench"}
        elif isinstance(node, ast.ImportFrom):
            target = _resolve_from(name, node)
            if target.split(".")[0] != "workbench":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in SOURCES else target)
    return {m for m in out if m in SOURCES and m != name}


GRAPH: dict[str, set[str]] = {name: imports_of(name) for name in SOURCES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_the_package() -> None:
    assert _cycles(GRAPH) == []


def test_quant_imports_nothing_above_it() -> None:
    """The core depends only on itself, the pure-torch compress package and the bottom helpers."""
    allowed = ("workbench.quant", "workbench.compress", "workbench._common", "workbench.paths")
    bad = {
        name: sorted(m for m in deps if not m.startswith(allowed))
        for name, deps in GRAPH.items()
        if name.startswith("workbench.quant")
    }
    assert {k: v for k, v in bad.items() if v} == {}


def _third_party(name: str) -> set[str]:
    roots = set()
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            roots.add((node.module or "").split(".")[0])
    return roots


@pytest.mark.parametrize(
    ("library", "home"),
    [("mlflow", "workbench.tracking"), ("plotly", "workbench.ui"), ("ipywidgets", "workbench.ui")],
)
def test_heavy_libraries_stay_in_their_home(library: str, home: str) -> None:
    users = sorted(name for name in SOURCES if library in _third_party(name))
    assert [u for u in users if not u.startswith(home)] == []


def test_file_sizes() -> None:
    lines = {name: len(path.read_text().splitlines()) for name, path in SOURCES.items()}
    over_600 = {n: k for n, k in lines.items() if k > MAX_FILE_LINES}
    over_400 = {n: k for n, k in lines.items() if k > 400}
    assert over_600 == {}
    assert len(over_400) <= MAX_FILES_OVER_400, over_400
    assert statistics.median(lines.values()) < MAX_MEDIAN_FILE_LINES


def test_function_sizes() -> None:
    long = {
        f"{name}:{node.name}": node.end_lineno - node.lineno + 1
        for name, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    }
    assert long == {}


def test_import_workbench_is_light() -> None:
    """``import workbench`` (and the quantization core) brings no tracking, search or plotting library."""
    code = (
        "import sys, workbench, workbench.quant; "
        "print(','.join(m for m in ('mlflow', 'optuna', 'plotly', 'ipywidgets') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip() == ""
