"""Latency statistics and side-by-side timing: counts and orders of runs, never wall-clock thresholds."""

from __future__ import annotations

import pytest
import torch

from workbench.hardware.timing import LatencyStats, cpu_has_vnni, cpu_name, time_side_by_side


def test_latency_stats_from_times_odd_and_even():
    s = LatencyStats.from_times([0.003, 0.001, 0.002])
    assert (
        s.median_ms == pytest.approx(2.0)
        and s.min_ms == pytest.approx(1.0)
        and s.max_ms == pytest.approx(3.0)
    )
    assert s.times_ms == pytest.approx((3.0, 1.0, 2.0))  # in run order, converted to milliseconds
    even = LatencyStats.from_times([0.004, 0.001, 0.002, 0.003])
    assert even.median_ms == pytest.approx(2.5)  # mean of the two middle runs
    one = LatencyStats.from_times([0.5])
    assert one.median_ms == one.min_ms == one.max_ms == pytest.approx(500.0)


def test_latency_stats_to_dict():
    d = LatencyStats.from_times([0.001, 0.002]).to_dict()
    assert set(d) == {"median_ms", "min_ms", "max_ms", "times_ms"}
    assert d["times_ms"] == pytest.approx([1.0, 2.0]) and isinstance(d["times_ms"], list)
    assert d["median_ms"] == pytest.approx(1.5)


def test_side_by_side_runs_every_fn_interleaved_with_warmup():
    calls: list[str] = []

    def make(name):
        def fn(x):
            calls.append(name)
            return x + 1

        return fn

    x = torch.ones(3)
    out = time_side_by_side({"a": make("a"), "b": make("b")}, x, repeats=4, warmup=2)
    assert list(out) == ["a", "b"]
    assert calls == ["a", "b"] * (2 + 4)  # run by run, the same input for all
    for stats in out.values():
        assert len(stats.times_ms) == 4
        assert 0.0 <= stats.min_ms <= stats.median_ms <= stats.max_ms
        assert stats.min_ms == min(stats.times_ms) and stats.max_ms == max(stats.times_ms)


def test_side_by_side_passes_tuples_and_dicts_and_runs_without_grad():
    seen = []

    def pos(a, b):
        seen.append(("pos", a.shape, b.shape, torch.is_inference_mode_enabled()))

    def kw(*, ids, mask):
        seen.append(("kw", ids.shape, mask.shape, torch.is_inference_mode_enabled()))

    time_side_by_side({"p": pos}, (torch.ones(2), torch.ones(3)), repeats=1, warmup=0)
    time_side_by_side({"k": kw}, {"ids": torch.ones(4), "mask": torch.ones(5)}, repeats=1, warmup=0)
    assert seen == [("pos", (2,), (3,), True), ("kw", (4,), (5,), True)]


def test_side_by_side_restores_threads_and_validates():
    before = torch.get_num_threads()
    threads_seen = []
    time_side_by_side({"f": lambda x: threads_seen.append(torch.get_num_threads())}, torch.ones(1), repeats=2,
                      warmup=0, threads=1)  # fmt: skip
    assert threads_seen == [1, 1] and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        time_side_by_side({"f": lambda x: x}, torch.ones(1), repeats=0)
    with pytest.raises(ValueError, match="warmup=-1"):
        time_side_by_side({"f": lambda x: x}, torch.ones(1), warmup=-1)
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        time_side_by_side({"f": lambda x: x}, torch.ones(1), threads=0)
    assert torch.get_num_threads() == before


def test_cpu_facts():
    name = cpu_name()
    assert isinstance(name, str) and name.strip() == name and name
    assert isinstance(cpu_has_vnni(), bool)
