"""Size of the package: files and their lines, functions and theirs (docstrings included), and what is over the
limits tests/test_architecture.py keeps. ``python scripts/house_stats.py [FOLDER]`` (default: workbench)."""

from __future__ import annotations

import ast
import statistics
import sys
from pathlib import Path


def _p90(values: list[int]) -> int:
    values = sorted(values)
    return values[min(len(values) - 1, int(0.9 * len(values)))]


def main(root: Path) -> None:
    files = sorted(root.rglob("*.py"))
    lines: list[int] = []
    funcs: list[tuple[int, str]] = []
    for f in files:
        src = f.read_text()
        lines.append(len(src.splitlines()))
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                funcs.append((node.end_lineno - node.lineno + 1, f"{f}:{node.name}"))
    sizes = [n for n, _ in funcs]
    print(
        f"files {len(files)}: lines median {statistics.median(lines)} / p90 {_p90(lines)} / max {max(lines)}; "
        f"over 400: {sum(n > 400 for n in lines)}, over 600: {sum(n > 600 for n in lines)}"
    )
    print(
        f"functions {len(funcs)}: lines median {statistics.median(sizes)} / p90 {_p90(sizes)} / max {max(sizes)}; "
        f"over 80: {sum(n > 80 for n in sizes)}"
    )
    for n, name in sorted(funcs, reverse=True):
        if n <= 80:
            break
        print(f"  {n:4d}  {name}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "workbench"))
