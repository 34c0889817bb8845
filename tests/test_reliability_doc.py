"""docs/RELIABILITY.md: at least 25 cases, and every test a row cites exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "RELIABILITY.md"


def _rows() -> list[list[str]]:
    rows = []
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells and re.fullmatch(r"[A-Z]\d+", cells[0]):
            rows.append(cells)
    return rows


def _cited_tests(cell: str, default_file: str | None) -> list[tuple[str, str]]:
    """(file, test name) for each `tests/x.py::name`, `...::name` (same file as before) or `name` (the
    section's file) in a table cell."""
    out = []
    file = default_file
    for raw in re.findall(r"`([^`]+)`", cell):
        if "::" in raw:
            head, name = raw.split("::", 1)
            if head != "...":
                file = head
        else:
            if not raw.startswith("test_"):
                continue
            name = raw
        assert file is not None, f"no test file for {raw!r}"
        out.append((file, name.split("[")[0]))
    return out


def test_reliability_table_has_25_cases_each_with_an_existing_test() -> None:
    rows = _rows()
    assert len(rows) >= 25, f"{len(rows)} cases"
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)), "case ids repeat"
    text = DOC.read_text()
    assert "TABLE" not in text and "_ROW" not in text, "a placeholder is left in the document"
    section_file = None
    for line in text.splitlines():
        m = re.search(r"Test \(`(tests/[\w/]+\.py)::`\)", line)
        if m:
            section_file = m.group(1)
        elif line.startswith("## "):
            section_file = None
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not (line.startswith("|") and cells and re.fullmatch(r"[A-Z]\d+", cells[0])):
            continue
        cited = _cited_tests(cells[-1], section_file)
        assert cited, f"case {cells[0]} cites no test"
        for file, name in cited:
            source = (ROOT / file).read_text()
            assert re.search(rf"^def {re.escape(name)}\(", source, re.M), (
                f"case {cells[0]}: {file}::{name} missing"
            )
