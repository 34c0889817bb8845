"""The sections of docs/BENCHMARKS.md: the suite's own section, Markdown tables and the one section writer
every benchmark script uses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.benchsuite.files import _atomic_write_text
from workbench.benchsuite.result import SuiteResult

SUITE_HEADING = "## Suite: machine, versions, commands"


def suite_section(result: SuiteResult) -> list[str]:
    m = result.machine
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [
        SUITE_HEADING,
        "",
        f"Last suite run: `{result.command}` (`make bench`{' ' if result.suite == 'quick' else '-full '}runs it)"
        f", {m['date_utc']} UTC, {result.seconds / 60:.1f} min in all.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; AVX512-VNNI {m['avx512_vnni']},"
        f" AVX512-BF16 {m['avx512_bf16']}; GPU {m['gpu'] or 'none'}; {m['os']}.",
        f"- Python {m['python']}; {versions}.",
        "- Seeds: data split, training and calibration are seeded (seed 0); searches use seeds 0..n-1 as each",
        "  section says. Timings are medians over the repeats each section names, with min / max where shown.",
        "",
        "| stage | command | status | seconds |",
        "|---|---|---|---|",
    ]
    for s in result.stages:
        lines.append(f"| {s.name} | `{s.command}` | {s.status} | {s.seconds:.0f} |")
    lines.append("")
    return lines


def markdown_table(rows: list[dict[str, Any]], cols: list[str], fmt: Callable[[Any], str] = str) -> list[str]:
    """A Markdown table (header, rule, one line per row) of ``cols`` of ``rows``, each value through ``fmt``."""
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return out + ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]


def splice_section(doc: Path, heading: str, lines: list[str]) -> None:
    """Replace the section of ``doc`` starting at the line ``heading`` (up to the next ``## ``) with ``lines``,
    or append them; every other section is kept. The one way every benchmark script edits BENCHMARKS.md."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    parts = text.split("\n")
    try:
        start = parts.index(heading)
    except ValueError:
        _atomic_write_text(doc, text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n")
        return
    end = next((i for i in range(start + 1, len(parts)) if parts[i].startswith("## ")), len(parts))
    _atomic_write_text(doc, "\n".join([*parts[:start], *lines, *parts[end:]]).rstrip("\n") + "\n")


def write_suite_section(doc: Path, result: SuiteResult) -> None:
    """Replace (or add) the suite section of ``doc``; every other section is kept."""
    lines = suite_section(result)
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    parts = text.split("\n")
    if SUITE_HEADING in parts:
        start = parts.index(SUITE_HEADING)
        end = next((i for i in range(start + 1, len(parts)) if parts[i].startswith("## ")), len(parts))
        parts = [*parts[:start], *lines, *parts[end:]]
    else:  # right after the preamble, before the first section
        first = next((i for i, line in enumerate(parts) if line.startswith("## ")), len(parts))
        parts = [*parts[:first], *lines, *parts[first:]]
    _atomic_write_text(doc, "\n".join(parts).rstrip("\n") + "\n")
