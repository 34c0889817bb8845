"""QATResult's derived values and dict, the comparison table and picking plans from a search front."""

from __future__ import annotations

import pandas as pd
import pytest

from workbench.qat import HISTORY_COLUMNS, QATConfig, QATError, QATResult, plans_from_search, qat_table
from workbench.quant import QuantPlan, QuantSpec


def _result(acc_after: float, bits: float) -> QATResult:
    plan = QuantPlan({"fc": QuantSpec(w_bits=4, a_bits=8)})
    history = pd.DataFrame([[1, "discrete", 4, 0.5, 0.5, None, None, None, 0.9, 1e-3, 0.1, False]],
                           columns=HISTORY_COLUMNS)  # fmt: skip
    return QATResult(
        task="t", plan=plan, final_plan=plan, config=QATConfig(), fp32_accuracy=0.98, accuracy_before=0.75,
        accuracy_after=acc_after, val_accuracy_before=0.7, val_accuracy_after=0.9, avg_weight_bits=bits,
        input_avg_weight_bits=4.0, avg_act_bits=8.0, size_bytes=100, fp32_size_bytes=800, packed_bytes=120,
        packed_path=None, steps=4, epochs_run=1, best_epoch=1, stopped_early=False, interrupted=False,
        resumed_at_step=None, step_ms=2.0, seconds=1.0, history=history,
    )  # fmt: skip


def test_result_drops_dict_and_table():
    r = _result(0.96, 4.0)
    assert r.drop_before_pp == pytest.approx(23.0) and r.drop_after_pp == pytest.approx(2.0)
    d = r.to_dict()
    assert d["drop_after_pp"] == pytest.approx(2.0) and d["config"]["epochs"] == 8
    assert d["plan"] == {"fc": QuantSpec(w_bits=4, a_bits=8).to_dict()} and d["history"][0]["loss"] == 0.5
    assert "model" not in d
    table = qat_table({"a": r, "b": _result(0.9, 3.0)})
    assert list(table["name"]) == ["a", "b"] and list(table["avg_weight_bits"]) == [4.0, 3.0]
    assert table["drop_after_pp"].tolist() == pytest.approx([2.0, 8.0])


class _Search:
    fp32_weight_bytes = 1000

    def __init__(self):
        plans = [QuantPlan({"fc": QuantSpec(w_bits=b, a_bits=8)}).to_json() for b in (2, 4, 8)]
        self.front = pd.DataFrame(
            {"plan": plans, "weight_bytes": [60, 125, 250], "accuracy": [0.9, 0.97, 0.97],
             "avg_weight_bits": [2.0, 4.0, 8.0], "label": "tpe", "trial": [3, 7, 9]}
        )  # fmt: skip


def test_plans_from_search_best_first_within_the_budget():
    plans = plans_from_search(_Search(), k=2)
    assert list(plans) == ["tpe #7 (4.00 bits)", "tpe #9 (8.00 bits)"]  # equal accuracy: fewer bytes first
    assert plans["tpe #7 (4.00 bits)"]["fc"].w_bits == 4
    assert list(plans_from_search(_Search(), k=5, max_weight_fraction=0.1)) == ["tpe #3 (2.00 bits)"]
    with pytest.raises(QATError, match="the smallest has 0.0600"):
        plans_from_search(_Search(), max_weight_fraction=0.01)
    with pytest.raises(QATError, match="k=0"):
        plans_from_search(_Search(), k=0)
    with pytest.raises(QATError, match="column='latency'"):
        plans_from_search(_Search(), column="latency")
    with pytest.raises(QATError, match="front of plans"):
        plans_from_search(object())
