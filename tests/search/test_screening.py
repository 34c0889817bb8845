"""Multi-fidelity screening: distinct plans, chosen by non-dominated layers up to the budget."""

from __future__ import annotations

from workbench.search.context import objective_values
from workbench.search.screening import _by_front_layers


def test_front_layers_fill_the_budget_in_order():
    # (accuracy max, weight bytes min): front {0, 1, 3}, then {2}, then {4}
    vals = [[0.9, 400.0], [0.8, 100.0], [0.7, 300.0], [0.95, 900.0], [0.6, 500.0]]
    unique = [({"p": i}, v) for i, v in enumerate(vals)]
    chosen = _by_front_layers(unique, ("accuracy", "weight_size"), budget=4)
    assert [p["p"] for _, p in chosen] == [0, 1, 3, 2]
    assert [label for label, _ in chosen] == ["screened front 0"] * 3 + ["screened front 1"]
    assert len(_by_front_layers(unique, ("accuracy", "weight_size"), budget=2)) == 2
    everything = _by_front_layers(unique, ("accuracy", "weight_size"), budget=9)
    assert [p["p"] for _, p in everything] == [0, 1, 3, 2, 4]


def test_objective_values_read_the_costs():
    class Cost:
        size_bytes, weight_bytes, bops, latency_ms, energy_mj = 10, 4, 7, 0.5, None

    values = objective_values(("accuracy", "bops", "weight_size", "latency"), 0.75, Cost())
    assert values == [0.75, 7.0, 4.0, 0.5]
