"""Running one stage's script in a fresh process, killed with the suite's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

Runner = Callable[[list[str], Path], tuple[int, str]]


def _kill_with_parent_fn() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when the suite's process dies (Linux
    ``PR_SET_PDEATHSIG``), so a suite killed midway leaves no stage running on; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:  # in the child, between fork and exec: no imports, no locks
        prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the suite died before prctl took effect
            os._exit(1)

    return preexec


def _subprocess_runner(argv: list[str], root: Path) -> tuple[int, str]:
    """Run one script with this interpreter; its output goes to the terminal and the last lines are kept."""
    proc = subprocess.Popen(  # noqa: S603 - our own scripts, with this interpreter
        [sys.executable, *argv[1:]],
        cwd=root,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # the script's lines reach the terminal as they come
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_kill_with_parent_fn(),  # only prctl and getppid run in it
    )
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stderr.write(line)
        tail = [*tail[-39:], line]
    return proc.wait(), "".join(tail)
