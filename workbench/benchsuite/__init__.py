"""The benchmark suite behind docs/BENCHMARKS.md: ``python -m workbench bench --suite {quick,full}``.

A suite is an ordered list of benchmark scripts (``bench/*.py`` of a source checkout), each with the arguments
of that suite. Every script writes its own ``## `` sections of docs/BENCHMARKS.md in place and its raw results
under ``bench/out/``; the suite runs them in fresh processes (so one script's caches and threads cannot skew
the next one's timings), times them, and writes the machine, versions, commands and stage times as the
"## Suite" section plus one JSON that gathers every script's results.

Resume: every stage that finishes is recorded in ``bench/out/suite-<suite>.state.json`` (written atomically)
with its command, a fingerprint of its inputs (the script, its optional input, the workbench sources) and the
SHA-256 of its results file. ``run_suite(..., resume=True)`` (or ``WORKBENCH_BENCH_RESUME=1``) skips, and says
so, every stage whose record still matches; a stage killed midway, or whose command, inputs or results file
changed since, runs again. A stage's process is killed with the suite's (Linux), so none is left running.

Parts: :mod:`.stages` (the suites), :mod:`.result`, :mod:`.machine`, :mod:`.runner` (one stage's process),
:mod:`.files`, :mod:`.state` (resume records), :mod:`.doc` (BENCHMARKS.md sections) and :mod:`.suite`
(:func:`run_suite`, where the suite's stages and the code fingerprint are looked up).
"""

from __future__ import annotations

from workbench.benchsuite.doc import (
    SUITE_HEADING,
    markdown_table,
    splice_section,
    suite_section,
    write_suite_section,
)
from workbench.benchsuite.files import _atomic_write_text, _sha256
from workbench.benchsuite.machine import machine_info
from workbench.benchsuite.result import KEPT_STATUS, StageResult, SuiteResult
from workbench.benchsuite.runner import Runner, _kill_with_parent_fn, _subprocess_runner
from workbench.benchsuite.stages import ROOT, SUITES, Stage, suite_stages
from workbench.benchsuite.state import STATE_VERSION, _workbench_fingerprint, state_path
from workbench.benchsuite.suite import run_suite

__all__ = [
    "KEPT_STATUS",
    "ROOT",
    "STATE_VERSION",
    "SUITES",
    "SUITE_HEADING",
    "Runner",
    "Stage",
    "StageResult",
    "SuiteResult",
    "_atomic_write_text",
    "_kill_with_parent_fn",
    "_sha256",
    "_subprocess_runner",
    "_workbench_fingerprint",
    "machine_info",
    "markdown_table",
    "run_suite",
    "splice_section",
    "state_path",
    "suite_section",
    "suite_stages",
    "write_suite_section",
]
