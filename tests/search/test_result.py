"""SearchResult.top_plans / best: ranking by a column (ties: fewer weight bytes) within size and bit budgets."""

from __future__ import annotations

import pandas as pd
import pytest

from workbench.search.config import SearchConfig
from workbench.search.result import SearchResult


def _result() -> SearchResult:
    front = pd.DataFrame(
        {
            "accuracy": [0.80, 0.85, 0.85, 0.70],
            "weight_bytes": [300, 500, 400, 100],
            "avg_weight_bits": [4.0, 8.0, 6.0, 2.0],
            "trial": [0, 1, 2, 3],
            "plan": ["{}"] * 4,
        }
    )
    return SearchResult(
        study_name="s", storage=":memory:", config=SearchConfig(), trials=front, front=front, hypervolume=0.0,
        real_evaluations=4, final_evaluations=0, fp32_accuracy=0.9, fp32_final_accuracy=None,
        fp32_weight_bytes=1000, fp32_size_bytes=2000, seconds=0.0,
    )  # fmt: skip


def test_top_plans_rank_best_first_within_budgets():
    r = _result()
    assert list(r.top_plans()["trial"]) == [2, 1, 0, 3]
    assert list(r.top_plans(2)["trial"]) == [2, 1]
    assert list(r.top_plans(max_weight_fraction=0.35)["trial"]) == [0, 3]
    assert list(r.top_plans(max_avg_weight_bits=6.0)["trial"]) == [2, 0, 3]
    assert list(r.top_plans(column="avg_weight_bits")["trial"]) == [1, 2, 0, 3]
    assert r.top_plans(max_weight_fraction=0.05).empty
    with pytest.raises(ValueError, match="k=0"):
        r.top_plans(0)


def test_best_is_the_first_top_plan():
    r = _result()
    assert r.best()["trial"] == 2
    assert r.best(max_avg_weight_bits=4.0)["trial"] == 0
    assert r.best(max_weight_fraction=0.2)["weight_bytes"] == 100
    with pytest.raises(ValueError, match="no front plan within max_weight_fraction=0.05"):
        r.best(max_weight_fraction=0.05)
