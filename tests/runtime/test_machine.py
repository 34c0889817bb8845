"""The latency manager: steps down on a missed p95, up on slack, backs off after a failed step up, reads load."""

from __future__ import annotations

import math

import pytest

from workbench.runtime import LatencyManager, MachineReading, PsutilMachine, SLOConfig

IDLE = MachineReading()
CFG = SLOConfig(target_s=0.010, window=4, slack=0.5)


def _feed(mgr, latencies, reading=IDLE, start=0):
    return [m for i, s in enumerate(latencies, start) if (m := mgr.record(i, s, reading)) is not None]


def test_steps_down_when_the_window_p95_misses_the_target_and_up_on_slack():
    mgr = LatencyManager(3, CFG)
    assert mgr.level == 2
    assert _feed(mgr, [0.008] * 4) == []  # within the target, no slack: stay
    moves = _feed(mgr, [0.008, 0.008, 0.008, 0.020], start=4)  # p95 of the window misses
    assert [(m.index, m.from_rung, m.to_rung) for m in moves] == [(7, 2, 1)]
    assert "p95" in moves[0].reason and "> target 10 ms" in moves[0].reason
    assert len(mgr.window) == 0  # a move starts a new window
    moves = _feed(mgr, [0.003] * 3, start=8)
    assert moves == [] and mgr.level == 1  # the window is not full yet
    moves = _feed(mgr, [0.003], start=11)
    assert [(m.from_rung, m.to_rung) for m in moves] == [(1, 2)] and "slack" in moves[0].reason


def test_a_failed_step_up_doubles_the_wait_before_the_next():
    mgr = LatencyManager(2, CFG, start=0)
    _feed(mgr, [0.001] * 4)
    assert mgr.level == 1
    _feed(mgr, [0.020] * 4, start=4)  # the step up failed in its first window
    assert mgr.level == 0
    _feed(mgr, [0.001] * 7, start=8)  # 2 x window = 8 items to wait: the window fills, no step yet
    assert mgr.level == 0
    _feed(mgr, [0.001], start=15)
    assert mgr.level == 1
    assert [(m.index, m.to_rung) for m in mgr.moves] == [(3, 1), (7, 0), (15, 1)]


def test_busy_cpu_blocks_stepping_up_and_full_memory_steps_down():
    mgr = LatencyManager(3, CFG, start=0)
    _feed(mgr, [0.001] * 8, MachineReading(99.0, 85.0, 50.0))
    assert mgr.level == 0  # others load the CPU: no step up despite the slack
    _feed(mgr, [0.001] * 4, MachineReading(60.0, 10.0, 50.0), start=8)
    assert mgr.level == 1
    moves = _feed(mgr, [0.001] * 4, MachineReading(10.0, 0.0, 97.0), start=12)
    assert mgr.level == 0 and moves[0].reason == "memory 97 % >= 95 %"


def test_quantile_and_config_validation():
    mgr = LatencyManager(1, SLOConfig(window=5, quantile=0.5))
    assert math.isnan(mgr.quantile())
    for i, s in enumerate([0.001, 0.002, 0.003, 0.004, 0.1]):
        assert mgr.record(i, s, IDLE) is None  # a one-rung ladder never moves
    assert mgr.quantile() == pytest.approx(0.003)
    for kw, match in [
        ({"target_s": 0.0}, "target_s=0.0"),
        ({"quantile": 1.5}, "quantile=1.5"),
        ({"slack": 1.0}, "slack=1.0"),
        ({"window": 1}, "window=1"),
        ({"cpu_high": 120.0}, "cpu_high=120.0"),
    ]:
        with pytest.raises(ValueError, match=match):
            SLOConfig(**kw)
    with pytest.raises(ValueError, match="start=3 is not valid; choose a rung in 0..2"):
        LatencyManager(3, start=3)


def test_psutil_machine_reads_percentages():
    r = PsutilMachine()()
    for v in (r.cpu_percent, r.others_cpu_percent, r.memory_percent):
        assert 0.0 <= v <= 100.0
    assert r.others_cpu_percent <= r.cpu_percent
