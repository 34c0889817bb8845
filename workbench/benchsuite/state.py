"""Resume: the record of finished stages (``bench/out/suite-<suite>.state.json``) and whether a stage's record
still matches this run (its command, inputs fingerprint and results file)."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

from workbench.benchsuite.files import _sha256
from workbench.benchsuite.stages import ROOT, Stage

STATE_VERSION = 1


def _workbench_fingerprint() -> str:
    """SHA-256 of every ``workbench/**/*.py`` this suite imports: a stage measured with other code is stale."""
    h = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]  # workbench/
    for file in sorted(package.rglob("*.py")):
        h.update(str(file.relative_to(package)).encode())
        h.update(file.read_bytes())
    return h.hexdigest()


def _inputs_fingerprint(stage: Stage, root: Path, code: str) -> str:
    parts = [json.dumps(stage.command()), _sha256(root / stage.script) or "", code]
    if stage.optional_input:
        parts.append(_sha256(root / stage.optional_input) or "missing")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def state_path(suite: str, root: Path = ROOT) -> Path:
    """Where :func:`run_suite` records finished stages of ``suite`` (see the module docstring)."""
    return root / "bench" / "out" / f"suite-{suite}.state.json"


def _read_state(path: Path, suite: str) -> dict[str, Any]:
    """Finished stages recorded in ``path`` (empty, with a warning naming the file, when it is unreadable or
    belongs to another suite or format)."""
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict) or not isinstance(state.get("stages"), dict):
            raise ValueError("not a suite state file")
        if state.get("version") != STATE_VERSION or state.get("suite") != suite:
            raise ValueError(f"version {state.get('version')!r} of suite {state.get('suite')!r}")
    except (OSError, ValueError) as e:
        warnings.warn(f"bench state file {path} is unusable ({e}); every stage runs again", stacklevel=3)
        return {}
    return state["stages"]


def _kept_reason(stage: Stage, record: Any, root: Path, fingerprint: str) -> tuple[bool, str]:
    """(keep, why): whether a finished stage's record still matches this run."""
    if not isinstance(record, dict):
        return False, "not finished in an earlier run"
    if record.get("command") != stage.command():
        return (
            False,
            f"command changed since the earlier run ({' '.join(map(str, record.get('command') or []))})",
        )
    if record.get("inputs") != fingerprint:
        return False, "its script, input or the workbench code changed since the earlier run"
    if stage.results:
        sha = _sha256(root / stage.results)
        if sha is None:
            return False, f"its results file {stage.results} is missing"
        if sha != record.get("results_sha256"):
            return False, f"its results file {stage.results} changed since the earlier run"
    return True, f"finished {record.get('finished_utc', '?')} UTC with the same command, inputs and results"
