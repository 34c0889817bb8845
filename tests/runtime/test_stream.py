"""Serving a stream on a deployed ladder: per-item results, latency target under load, budget, bad items."""

from __future__ import annotations

import math

import pytest
import torch

from tests.runtime.fakes import fake_ladder
from workbench.runtime import (
    MachineReading,
    ManagedRuntime,
    RuntimeBudgetError,
    SLOConfig,
    idle_machine,
    stream_summary,
    stream_table,
)

SLO = SLOConfig(target_s=0.006, window=4, slack=0.5)


def _stream(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(8, generator=gen) for _ in range(n)]


def test_static_stream_serves_every_item_on_one_rung(clock):
    ladder, deployed = fake_ladder(clock)
    rt = ManagedRuntime(ladder, machine=idle_machine, clock=clock)
    items = list(rt.serve(_stream(10)))
    assert [it.rung for it in items] == [2] * 10 and all(it.ok for it in items)
    assert [it.seconds for it in items] == pytest.approx([0.008] * 10)
    assert items[0].output.shape == (4,)
    torch.testing.assert_close(items[0].output, ladder.run(_stream(1)[0][None], 2)[0])
    assert deployed == [0, 1, 2]  # every rung deployed once, never again


def test_competing_load_steps_down_and_back_up_keeping_the_target(clock):
    ladder, _ = fake_ladder(clock, latencies=(0.0015, 0.0025, 0.0045))
    rt = ManagedRuntime(ladder, slo=SLO, machine=idle_machine, clock=clock)
    results = []
    for i, x in enumerate(_stream(60)):
        clock.load = 2.0 if 12 <= i < 36 else 1.0  # another process slows every pass 2x mid-stream
        results.append(rt.serve_one(i, x))
    rungs = [it.rung for it in results]
    assert rungs[:13] == [2] * 13
    assert rungs[13:40] == [1] * 27 and rungs[40:] == [2] * 20
    moves = [(m.index, m.from_rung, m.to_rung) for m in rt.manager.moves]
    # the first slow item lifts the window's p95 over the target; slack needs a whole window of fast items
    assert moves == [(12, 2, 1), (39, 1, 2)]
    tab = stream_table(results)
    s = stream_summary(tab[(tab["index"] >= 20) & (tab["index"] < 36)])
    assert s["p95_s"] <= SLO.target_s  # under load, after the steps down, within the target
    static = ManagedRuntime(ladder, machine=idle_machine, clock=clock)
    clock.load = 2.0
    st = stream_summary(stream_table(static.serve(_stream(16))))
    assert st["p95_s"] == pytest.approx(0.009) and st["p95_s"] > SLO.target_s  # the static plan misses


def test_bad_items_are_rejected_with_a_reason_and_the_rest_served(clock):
    ladder, _ = fake_ladder(clock)
    rt = ManagedRuntime(ladder, slo=SLO, machine=idle_machine, clock=clock)
    good = _stream(3)
    nan = good[0].clone()
    nan[2] = math.nan
    batch = torch.stack(good)
    batch[1, 0] = math.inf
    items = [
        good[0],
        nan,
        torch.zeros(9),
        torch.zeros(8, dtype=torch.long),
        [1.0] * 8,
        batch,
        torch.zeros(0, 8),
    ]
    items += [torch.stack(good), torch.full((8,), 3e38)]  # the last one's sum overflows, its values do not
    out = list(rt.serve(items))
    assert [it.reason for it in out] == [
        None,
        "contains NaN or Inf values (rows [0])",
        "shape (9,) does not match [8] or [N, 8]",
        "dtype torch.int64 is not floating point",
        "not a torch.Tensor (got list)",
        "contains NaN or Inf values (rows [1])",
        "empty micro-batch (N = 0)",
        None,
        None,
    ]
    assert [it.rung for it in out] == [2, -1, -1, -1, -1, -1, -1, 2, 2]
    assert out[-2].output.shape == (3, 4) and out[-1].output.shape == (4,) and out[1].output is None
    assert len(rt.manager.window) == 3  # only served items are timed against the target
    s = stream_summary(stream_table(out))
    assert (s["served"], s["rejected"], s["rungs"]) == (3, 6, {2: 3})


def test_cost_budget_caps_the_rung_over_the_stream(clock):
    ladder, _ = fake_ladder(clock)
    bits = ladder.costs("avg_bits")
    assert bits.tolist() == [4.0, 8.0, 32.0]
    rt = ManagedRuntime(ladder, budget=8.0, budget_kind="avg_bits", machine=idle_machine, clock=clock)
    items = list(rt.serve(_stream(20)))
    avg = sum(it.cost for it in items) / len(items)
    assert avg <= 8.0 + 1e-9 and {it.rung for it in items} <= {0, 1, 2}
    assert rt.budget.overrides > 0
    with pytest.raises(RuntimeBudgetError, match="below the cheapest"):
        ManagedRuntime(ladder, budget=2.0, budget_kind="avg_bits", machine=idle_machine, clock=clock)


def test_machine_is_read_every_few_items_and_the_reading_recorded(clock):
    ladder, _ = fake_ladder(clock)
    readings = iter([MachineReading(70.0, 20.0, 40.0), MachineReading(90.0, 60.0, 41.0)])

    def machine():
        clock.spend(0.001)  # reading the machine takes time, counted in the item's seconds
        return next(readings)

    rt = ManagedRuntime(ladder, slo=SLO, machine=machine, clock=clock, read_every=3)
    tab = stream_table(rt.serve(_stream(4)))
    assert tab["others_cpu_percent"].tolist() == [20.0, 20.0, 20.0, 60.0]
    assert tab["seconds"].tolist() == pytest.approx([0.009, 0.008, 0.008, 0.009])
    with pytest.raises(ValueError, match="read_every=0"):
        ManagedRuntime(ladder, machine=machine, clock=clock, read_every=0)
