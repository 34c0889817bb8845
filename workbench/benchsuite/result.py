"""What a suite run returns: one :class:`StageResult` per stage inside a :class:`SuiteResult`."""

from __future__ import annotations

import dataclasses
from typing import Any

KEPT_STATUS = "ok (kept from an earlier run)"  # a finished stage skipped by resume=True


@dataclasses.dataclass
class StageResult:
    name: str
    command: str
    status: str  # "ok", "failed (exit N)" or "skipped: why"
    seconds: float
    results: Any = None
    log_tail: str = ""
    note: str = ""  # resume: why the stage was kept, or why it ran again


@dataclasses.dataclass
class SuiteResult:
    suite: str
    machine: dict[str, Any]
    stages: list[StageResult]
    seconds: float
    command: str

    @property
    def ok(self) -> bool:
        return all(s.status in ("ok", KEPT_STATUS) or s.status.startswith("skipped") for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "command": self.command,
            "machine": self.machine,
            "seconds": self.seconds,
            "ok": self.ok,
            "stages": [dataclasses.asdict(s) for s in self.stages],
        }
