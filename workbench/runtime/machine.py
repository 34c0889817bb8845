"""Reading the machine and keeping a latency target: measured p95 over a window, CPU load and memory (psutil).

:class:`LatencyManager` holds the rung a stream runs on: it steps down to a cheaper rung when the measured latency
quantile over its window misses the target (or memory runs out), and back up when there is slack and the CPU is
not busy with other work. A failed step up (a miss in the first window after it) doubles the wait before the
next try, so the rung does not oscillate. The clock and the machine readings are passed in, so the decisions are
reproducible from recorded latencies and readings.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class MachineReading:
    """``cpu_percent``: the whole machine busy (all cores); ``others_cpu_percent``: that less this process;
    ``memory_percent``: memory in use."""

    cpu_percent: float = 0.0
    others_cpu_percent: float = 0.0
    memory_percent: float = 0.0


Machine = Callable[[], MachineReading]
"""A machine reader: called once per served item."""


class PsutilMachine:
    """This machine through psutil: CPU busy since the previous reading (whole machine, and less this process,
    scaled to all cores), memory in use."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._proc = psutil.Process()
        self._ncpu = psutil.cpu_count() or 1
        psutil.cpu_percent(None)  # the first readings start the intervals
        self._proc.cpu_percent(None)

    def __call__(self) -> MachineReading:
        total = float(self._psutil.cpu_percent(None))
        ours = float(self._proc.cpu_percent(None)) / self._ncpu
        mem = float(self._psutil.virtual_memory().percent)
        return MachineReading(total, max(0.0, total - ours), mem)


def idle_machine() -> MachineReading:
    """A machine reader that always reads an idle machine (tests, or no psutil wanted)."""
    return MachineReading()


@dataclass(frozen=True)
class SLOConfig:
    """The latency target of a stream. ``target_s``: seconds per item at the ``quantile`` (p95) over the last
    ``window`` items; step up when that quantile is at most ``slack`` x the target, other processes use less than
    ``cpu_high`` % of the CPU and memory is below ``memory_high`` %; at or above ``memory_high`` % step down."""

    target_s: float = 0.010
    quantile: float = 0.95
    window: int = 16
    slack: float = 0.6
    cpu_high: float = 80.0
    memory_high: float = 95.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target_s) and self.target_s > 0):
            raise ValueError(f"target_s={self.target_s!r} must be a positive number of seconds")
        if not 0 < self.quantile <= 1:
            raise ValueError(f"quantile={self.quantile!r} must lie in (0, 1]")
        if not 0 < self.slack < 1:
            raise ValueError(f"slack={self.slack!r} must lie in (0, 1)")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 2:
            raise ValueError(f"window={self.window!r} must be an integer >= 2")
        for name in ("cpu_high", "memory_high"):
            v = getattr(self, name)
            if not 0 < v <= 100:
                raise ValueError(f"{name}={v!r} must be a percentage in (0, 100]")


def _quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of sorted ``values``, linearly interpolated (numpy's default method), in plain Python: a
    window of a few dozen latencies is read after every item, where ``np.quantile`` costs ~0.1 ms."""
    pos = q * (len(values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


@dataclass(frozen=True)
class RungMove:
    """The manager moved from ``from_rung`` to ``to_rung`` after item ``index``, for ``reason``."""

    index: int
    from_rung: int
    to_rung: int
    reason: str


class LatencyManager:
    """The rung of a stream under an :class:`SLOConfig` (``start``: the first rung; default the top)."""

    def __init__(self, n_rungs: int, config: SLOConfig | None = None, *, start: int | None = None) -> None:
        if n_rungs < 1:
            raise ValueError(f"n_rungs={n_rungs} must be >= 1")
        self.config = config or SLOConfig()
        self.n_rungs = n_rungs
        self.level = n_rungs - 1 if start is None else int(start)
        if not 0 <= self.level < n_rungs:
            raise ValueError(f"start={start} is not valid; choose a rung in 0..{n_rungs - 1}")
        self.window: deque[float] = deque(maxlen=self.config.window)
        self.moves: list[RungMove] = []
        self._wait = 0  # items to wait before the next step up
        self._failures = 0  # consecutive step-ups undone within their first window
        self._just_up = False

    def quantile(self) -> float:
        """The latency quantile over the current window (NaN when empty)."""
        return _quantile(sorted(self.window), self.config.quantile) if self.window else math.nan

    def record(self, index: int, seconds: float, reading: MachineReading) -> RungMove | None:
        """Record item ``index``'s measured ``seconds`` and the machine ``reading``; the move made, if any."""
        cfg = self.config
        self.window.append(float(seconds))
        self._wait = max(0, self._wait - 1)
        if len(self.window) < cfg.window:
            return None
        q = self.quantile()
        if reading.memory_percent >= cfg.memory_high and self.level > 0:
            return self._move(index, -1, f"memory {reading.memory_percent:.0f} % >= {cfg.memory_high:.0f} %")
        if q > cfg.target_s and self.level > 0:
            if self._just_up:
                self._failures += 1
                self._wait = cfg.window * 2**self._failures
            return self._move(
                index, -1, f"p{100 * cfg.quantile:.0f} {1e3 * q:.3g} ms > target {1e3 * cfg.target_s:.3g} ms"
            )
        if self._just_up:  # the step up held for a whole window
            self._failures, self._just_up = 0, False
        if (
            q <= cfg.slack * cfg.target_s
            and self.level < self.n_rungs - 1
            and self._wait == 0
            and reading.others_cpu_percent < cfg.cpu_high
            and reading.memory_percent < cfg.memory_high
        ):
            return self._move(
                index, +1, f"p{100 * cfg.quantile:.0f} {1e3 * q:.3g} ms <= {cfg.slack:g} x target (slack)"
            )
        return None

    def _move(self, index: int, step: int, reason: str) -> RungMove:
        move = RungMove(index, self.level, self.level + step, reason)
        self.level += step
        self._just_up = step > 0
        self.window.clear()
        self.moves.append(move)
        return move
