"""The flat tables and metrics read off a RuntimeEvaluation (no model: a hand-made evaluation)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from workbench.runtime import SUMMARY_COLUMNS, ProbeResult, RuntimeEvaluation

NAN = math.nan


def _evaluation(data=("clean", "noise")) -> RuntimeEvaluation:
    first, second = data
    table = pd.DataFrame(
        [
            {"data": first, "budget_fraction": 0.5, "budget": 50.0, "policy": "rule", "accuracy": 0.9,
             "avg_cost": 50.0, "static_accuracy": 0.85, "static_map": "a:4 b:4", "note": ""},
            {"data": first, "budget_fraction": 0.2, "budget": 20.0, "policy": "rule", "accuracy": NAN,
             "note": "budget 20 is below the cheapest"},
            {"data": first, "budget_fraction": NAN, "budget": NAN, "policy": "oracle", "accuracy": 0.95,
             "avg_cost": 40.0, "static_accuracy": NAN, "static_map": "", "note": "upper bound"},
            {"data": second, "budget_fraction": 0.5, "budget": 50.0, "policy": "rule", "accuracy": 0.8,
             "avg_cost": 45.0, "static_accuracy": 0.82, "static_map": "a:2 b:8", "note": ""},
        ]
    )  # fmt: skip
    static_maps = pd.DataFrame(
        [
            {"data": first, "map": "a:2 b:2", "cost": 25.0, "bops": 25.0, "avg_bits": 2.0, "accuracy": 0.7},
            {"data": first, "map": "a:2 b:2", "cost": 25.0, "bops": 25.0, "avg_bits": 2.0, "accuracy": 0.7},
            {
                "data": first,
                "map": "a:8 b:8",
                "cost": 100.0,
                "bops": 100.0,
                "avg_bits": 8.0,
                "accuracy": 0.97,
            },
            {"data": second, "map": "a:2 b:2", "cost": 25.0, "bops": 25.0, "avg_bits": 2.0, "accuracy": 0.6},
            {
                "data": second,
                "map": "a:8 b:8",
                "cost": 100.0,
                "bops": 100.0,
                "avg_bits": 8.0,
                "accuracy": 0.9,
            },
        ]
    )
    probe = ProbeResult(
        table=pd.DataFrame(), ladder=[{"a": 2, "b": 2}, {"a": 8, "b": 8}], ladder_kl=[0.3, 0.0]
    )
    info = {"budget_kind": "bops", "top_cost": 100.0, "ladder": ["a:2 b:2", "a:8 b:8"]}
    return RuntimeEvaluation(table=table, static_maps=static_maps, probe=probe, info=info)


def test_to_metrics_keys_every_feasible_row():
    assert _evaluation().to_metrics() == pytest.approx(
        {
            "clean.rule.0.5.accuracy": 0.9,
            "clean.rule.0.5.avg_cost_fraction": 0.5,
            "clean.rule.0.5.static_accuracy": 0.85,
            "clean.oracle.accuracy": 0.95,
            "clean.oracle.avg_cost_fraction": 0.4,
            "noise.rule.0.5.accuracy": 0.8,
            "noise.rule.0.5.avg_cost_fraction": 0.45,
            "noise.rule.0.5.static_accuracy": 0.82,
        }
    )


def test_ladder_table_on_the_reference_data():
    ev = _evaluation()
    assert ev.reference_data == "clean"
    ladder = ev.ladder_table()
    assert list(ladder.columns) == ["map", "probe_kl", "cost_fraction", "avg_bits", "accuracy"]
    assert ladder["cost_fraction"].tolist() == [0.25, 1.0] and ladder["accuracy"].tolist() == [0.7, 0.97]
    assert ladder["probe_kl"].tolist() == [0.3, 0.0] and ladder["avg_bits"].tolist() == [2.0, 8.0]
    assert ev.ladder_table("noise")["accuracy"].tolist() == [0.6, 0.9]
    assert _evaluation(("noise", "blur")).reference_data == "noise"


def test_dynamic_vs_static_in_percentage_points():
    ev = _evaluation()
    diff = ev.dynamic_vs_static()
    assert list(diff.index) == [("rule", 0.5)]  # the oracle is no policy; the infeasible budget has no number
    assert diff.loc[("rule", 0.5), "clean"] == pytest.approx(5.0)
    assert diff.loc[("rule", 0.5), "noise"] == pytest.approx(-2.0)
    assert diff.equals(ev.dynamic_vs_static(["rule"]))


def test_summary_table_keeps_the_readable_columns_in_order():
    summary = _evaluation().summary_table()
    assert list(summary.columns) == [c for c in SUMMARY_COLUMNS if c in _evaluation().table.columns]
    assert list(summary.columns)[:4] == ["data", "budget_fraction", "policy", "accuracy"]
    assert len(summary) == 4


def test_tables_are_what_a_runtime_run_logs():
    ev = _evaluation()
    tables = ev.tables()
    assert list(tables) == ["runtime_table", "static_maps", "probe_table", "ladder"]
    assert tables["runtime_table"] is ev.table and tables["static_maps"] is ev.static_maps
    assert list(tables["ladder"]["map"]) == ["a:2 b:2", "a:8 b:8"]
    assert list(tables["ladder"]["cost_fraction"]) == [0.25, 1.0]
