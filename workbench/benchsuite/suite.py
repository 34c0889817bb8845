"""Running a suite (:func:`run_suite`): its stages in order, each in a fresh process, resumable from the record
of finished stages, then the suite section of docs/BENCHMARKS.md."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workbench.benchsuite.doc import write_suite_section
from workbench.benchsuite.files import _atomic_write_text, _sha256
from workbench.benchsuite.machine import machine_info
from workbench.benchsuite.result import KEPT_STATUS, StageResult, SuiteResult
from workbench.benchsuite.runner import Runner, _subprocess_runner
from workbench.benchsuite.stages import ROOT, Stage, suite_stages
from workbench.benchsuite.state import (
    STATE_VERSION,
    _inputs_fingerprint,
    _kept_reason,
    _read_state,
    _workbench_fingerprint,
    state_path,
)


@dataclasses.dataclass
class _Record:
    """The finished stages of ``suite``, rewritten atomically to ``path`` at every change."""

    path: Path
    suite: str
    finished: dict[str, Any]

    def set(self, name: str, entry: dict[str, Any] | None) -> None:
        if entry is None:
            self.finished.pop(name, None)
        else:
            self.finished[name] = entry
        body = {"version": STATE_VERSION, "suite": self.suite, "stages": self.finished}
        _atomic_write_text(self.path, json.dumps(body, indent=1) + "\n")


def _select_stages(suite: str, only: Sequence[str] | None, root: Path) -> list[Stage]:
    """The stages of ``suite`` kept by ``only``; FileNotFoundError if a stage to run has no script."""
    stages = suite_stages(suite)
    if only:
        stems = {Path(s.script).stem for s in stages}
        bad = sorted(set(only) - stems)
        if bad:
            raise ValueError(f"unknown stage(s) {bad}; valid choices: {', '.join(sorted(stems))}")
        stages = [s for s in stages if Path(s.script).stem in set(only)]
    runnable = [s for s in stages if not s.optional_input or (root / s.optional_input).exists()]
    missing = [s.script for s in runnable if not (root / s.script).exists()]
    if missing:
        raise FileNotFoundError(
            f"benchmark scripts {missing} not found under {root}: the suite runs from a source checkout"
        )
    return stages


def _kept_stage(
    stage: Stage, record: _Record, root: Path, fingerprint: str
) -> tuple[StageResult | None, str]:
    """Resume: (the stage's earlier result if its record still matches, else None; why), said on stderr."""
    keep, note = _kept_reason(stage, record.finished.get(stage.name), root, fingerprint)
    verb = "kept, not run again" if keep else "runs again"
    print(f"[bench resume] {stage.name}: {verb} ({note})", file=sys.stderr, flush=True)
    if not keep:
        return None, note
    entry = record.finished[stage.name]
    results = None
    if stage.results:
        results = json.loads((root / stage.results).read_text())
    cmd = " ".join(stage.command())
    return StageResult(
        stage.name, cmd, KEPT_STATUS, float(entry.get("seconds", 0.0)), results, note=note
    ), note


def _run_stage(
    stage: Stage, root: Path, runner: Runner, record: _Record, fingerprint: str, note: str
) -> StageResult:
    """Run one stage; recorded as unfinished while it runs and as finished when it exits 0."""
    record.set(stage.name, None)  # running: a kill from here on leaves it unfinished
    t0 = time.perf_counter()
    code_, tail = runner(stage.command(), root)
    seconds = time.perf_counter() - t0
    results = None
    if code_ == 0 and stage.results and (root / stage.results).exists():
        results = json.loads((root / stage.results).read_text())
    status = "ok" if code_ == 0 else f"failed (exit {code_})"
    cmd = " ".join(stage.command())
    done = StageResult(stage.name, cmd, status, seconds, results, tail if code_ else "", note=note)
    if code_ == 0:
        record.set(
            stage.name,
            {
                "command": stage.command(),
                "inputs": fingerprint,
                "results": stage.results,
                "results_sha256": _sha256(root / stage.results) if stage.results else None,
                "seconds": seconds,
                "finished_utc": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S}",
            },
        )
    return done


def run_suite(
    suite: str = "quick",
    *,
    root: Path = ROOT,
    only: Sequence[str] | None = None,
    runner: Runner | None = None,
    doc: Path | None = None,
    resume: bool | None = None,
    state: Path | None = None,
) -> SuiteResult:
    """Run every stage of ``suite`` in order (``only``: stage scripts' stems to keep, e.g. ``fronts_bench``),
    then write the suite section of ``doc`` (default ``docs/BENCHMARKS.md``). A failing stage does not stop the
    others; its status says so.

    Each stage that finishes is recorded in ``state`` (default :func:`state_path`). ``resume`` (None: the
    ``WORKBENCH_BENCH_RESUME`` environment variable, ``1`` meaning yes) keeps the stages recorded there whose
    command, inputs and results file still match (status :data:`KEPT_STATUS`, their earlier seconds and
    results) and runs the others; without it the record starts over."""
    if resume is None:
        resume = os.environ.get("WORKBENCH_BENCH_RESUME", "").strip().lower() in ("1", "true", "yes")
    stages = _select_stages(suite, only, root)
    runner = runner or _subprocess_runner
    machine = machine_info()
    state_file = state if state is not None else state_path(suite, root)
    record = _Record(state_file, suite, _read_state(state_file, suite) if resume else {})
    code = _workbench_fingerprint()
    if not resume:
        record.set("", None)  # a fresh record: nothing of an earlier run is kept
    t_all = time.perf_counter()
    done: list[StageResult] = []
    for stage in stages:
        if stage.optional_input and not (root / stage.optional_input).exists():
            done.append(
                StageResult(stage.name, " ".join(stage.command()), f"skipped: {stage.skip_reason}", 0.0)
            )
            continue
        fingerprint = _inputs_fingerprint(stage, root, code)
        note = ""
        if resume:
            kept, note = _kept_stage(stage, record, root, fingerprint)
            if kept is not None:
                done.append(kept)
                continue
        done.append(_run_stage(stage, root, runner, record, fingerprint, note))
    only_part = f" --only {' '.join(only)}" if only else ""
    result = SuiteResult(
        suite=suite,
        machine=machine,
        stages=done,
        seconds=time.perf_counter() - t_all,
        command=f"python -m workbench bench --suite {suite}{only_part}{' --resume' if resume else ''}",
    )
    write_suite_section(doc or root / "docs" / "BENCHMARKS.md", result)
    return result
