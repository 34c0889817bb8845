"""Search objectives on a tiny model: plan costs, Pareto fronts and hypervolume, the evaluation cache, measured
and predicted accuracy, and the reward shaping terms."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from workbench.quant.spec import QuantPlan, QuantSpec
from workbench.search.objectives import (
    OBJECTIVES,
    CostModel,
    EvalCache,
    HypervolumeRef,
    Objectives,
    PlanCost,
    PlanEvaluator,
    PredictedAccuracy,
    complexity,
    evaluation_prefix,
    front_hypervolume,
    hypervolume_2d,
    pareto_mask,
    similarity,
)


def tiny_model() -> nn.Module:
    """conv: 2 x 1 x 3 x 3 = 18 weights, 72 MACs on a 4 x 4 input; linear: 8 -> 3, 24 weights, 24 MACs."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 2 * 2, 3)).eval()


@pytest.fixture(scope="module")
def cost_model() -> CostModel:
    return CostModel(tiny_model(), torch.randn(1, 1, 4, 4), fp32_latency_ms=2.0)


# ============================================================================================ cost model


def test_fp32_cost(cost_model):
    assert cost_model.layers == ["0", "3"]
    assert cost_model.weight_params == {"0": 18, "3": 24}
    fp32 = cost_model.fp32_cost
    assert fp32.weight_bytes == 4 * (18 + 24)
    assert fp32.size_bytes == 4 * (18 + 24) + 4 * (2 + 3)  # plus the float32 biases
    assert fp32.bops == 32 * 32 * (72 + 24)
    assert fp32.latency_ms == 2.0
    assert fp32.avg_weight_bits == 32.0 and fp32.avg_act_bits == 32.0
    assert math.isnan(fp32.energy_mj)
    assert cost_model.latency_source == "bops_proxy"


def test_mixed_plan_cost(cost_model):
    plan = QuantPlan({"0": QuantSpec(w_bits=8, a_bits=8), "3": QuantSpec(w_bits=4, a_bits=8)})
    cost = cost_model(plan)
    assert cost.bops == 8 * 8 * 72 + 4 * 8 * 24
    # the BOPs proxy: the FP32 latency scaled by the plan's BOPs over FP32 BOPs
    assert cost.latency_ms == pytest.approx(2.0 * (8 * 8 * 72 + 4 * 8 * 24) / (32 * 32 * 96))
    # integer weights plus one float32 scale per output channel (symmetric: no zero points)
    assert cost.weight_bytes == (18 * 8 // 8 + 2 * 4) + (24 * 4 // 8 + 3 * 4)
    assert cost.avg_weight_bits == pytest.approx((18 * 8 + 24 * 4) / 42)
    assert cost.avg_act_bits == 8.0
    d = cost.to_dict()
    assert d["energy_mj"] is None and d["bops"] == cost.bops and d["weight_bytes"] == cost.weight_bytes


# ============================================================================================ fronts


def test_pareto_mask():
    values = np.array([[0.9, 100], [0.8, 50], [0.85, 120], [0.9, 100], [0.7, 40], [0.7, 60]])
    mask = pareto_mask(values, ["maximize", "minimize"])
    # row 2 is beaten by row 0, row 3 duplicates row 0 (the first is kept), row 5 is beaten by row 4
    assert mask.tolist() == [True, True, False, False, True, False]
    assert pareto_mask(np.zeros((0, 2)), ["maximize", "minimize"]).tolist() == []


def test_hypervolume():
    # one point: (0.25 - 0.1) x (0.9 - 0.8) over the box 0.25 x (1 - 0.8)
    hv1 = hypervolume_2d(np.array([0.9]), np.array([0.1]), ref_accuracy=0.8, ref_size_fraction=0.25)
    assert hv1 == pytest.approx(0.015 / 0.05)
    # a smaller, less accurate point adds (0.1 - 0.05) x (0.85 - 0.8)
    hv2 = hypervolume_2d(
        np.array([0.9, 0.85]), np.array([0.1, 0.05]), ref_accuracy=0.8, ref_size_fraction=0.25
    )
    assert hv2 == pytest.approx((0.015 + 0.0025) / 0.05)
    # points outside the reference box, or not finite, count for nothing
    hv3 = hypervolume_2d(
        np.array([0.9, 0.79, 0.95, np.nan]),
        np.array([0.1, 0.01, 0.3, 0.01]),
        ref_accuracy=0.8,
        ref_size_fraction=0.25,
    )
    assert hv3 == pytest.approx(hv1)
    assert hypervolume_2d(np.array([]), np.array([]), ref_accuracy=0.8, ref_size_fraction=0.25) == 0.0


def test_front_hypervolume():
    frame = pd.DataFrame({"accuracy": [0.88, 0.85], "weight_bytes": [100, 50]})
    ref = HypervolumeRef()
    assert ref.to_dict() == {"size_fraction": 0.25, "max_drop_pp": 10.0}
    hv = front_hypervolume(frame, fp32_accuracy=0.9, fp32_weight_bytes=1000, ref=ref)
    # reference point: accuracy 0.9 - 0.10, size fraction 0.25
    assert hv == pytest.approx(((0.1 - 0.05) * 0.05 + (0.25 - 0.1) * 0.08) / (0.25 * 0.2))
    tight = front_hypervolume(
        frame, fp32_accuracy=0.9, fp32_weight_bytes=1000, ref=HypervolumeRef(size_fraction=0.08)
    )
    assert tight == pytest.approx((0.08 - 0.05) * 0.05 / (0.08 * 0.2))
    assert front_hypervolume(frame.iloc[:0], fp32_accuracy=0.9, fp32_weight_bytes=1000) == 0.0


# ============================================================================================ trial values


def test_objectives_value_and_shaping():
    cost = PlanCost(size_bytes=300, weight_bytes=200, bops=5000, latency_ms=0.5, avg_weight_bits=4.0,
                    avg_act_bits=8.0)  # fmt: skip
    obj = Objectives(accuracy=0.9, cost=cost, source="measured")
    assert [obj.value(n) for n in ("accuracy", "size", "weight_size", "bops", "latency")] == [
        0.9, 300.0, 200.0, 5000.0, 0.5
    ]  # fmt: skip
    assert (
        Objectives(accuracy=0.9, cost=cost, source="measured", shaped_accuracy=0.85).value("accuracy") == 0.85
    )
    assert OBJECTIVES["accuracy"] == "maximize" and OBJECTIVES["latency"] == "minimize"

    w8, w4 = QuantSpec(w_bits=8), QuantSpec(w_bits=4)
    assert complexity(QuantPlan({"a": w8, "b": w8}), ["a", "b"]) == 0.0
    assert complexity(QuantPlan({"a": w8, "b": w4}), ["a", "b"]) == 0.5
    assert complexity(QuantPlan({"a": w8}), ["a", "b", "c", "d"]) == 0.25  # b, c, d float32: 2 distinct specs
    assert complexity(QuantPlan({}), []) == 0.0

    v = np.array([1, 2, 3, 4])
    assert similarity(v, []) == 0.0
    assert similarity(v, [np.array([1, 2, 0, 0]), np.array([1, 2, 3, 0])]) == 0.75
    assert similarity(v, [v.copy()]) == 1.0


# ============================================================================================ evaluation


class TinyTask:
    """The minimal task a PlanEvaluator needs; ``evaluate`` is the mean first logit on the split."""

    name = "tiny"
    output_key = None

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        g = torch.Generator().manual_seed(1)
        self.data = {s: [(torch.randn(4, 1, 4, 4, generator=g), torch.zeros(4))] for s in ("val", "test")}
        self.calib_loader = self.data["val"]
        self.calls = 0

    @staticmethod
    def metric(out: torch.Tensor, y: torch.Tensor) -> float:
        return float(out[:, 0].mean())

    def loader(self, split: str) -> list:
        return self.data[split]

    def evaluate(self, model: nn.Module, split: str) -> float:
        self.calls += 1
        x, y = self.data[split][0]
        with torch.no_grad():
            return self.metric(model(x), y)


def test_eval_cache_in_memory_and_sqlite(tmp_path):
    mem = EvalCache()
    assert mem.get("k") is None and len(mem) == 0
    mem.put("k", {"accuracy": 0.5})
    assert mem.get("k") == {"accuracy": 0.5} and len(mem) == 1
    assert mem.claim("k", "me") == "me"  # one process: every claim is won

    url = f"sqlite:///{tmp_path / 'cache.db'}"
    a, b = EvalCache(url), EvalCache(url)
    a.put("plan", {"accuracy": 0.75})
    b.put("plan", {"accuracy": 0.25})  # measured twice: the first measurement is kept in the database
    assert EvalCache(url).get("plan") == {"accuracy": 0.75}
    assert len(b) == 1
    assert a.claim("plan", "worker-a") == "worker-a"
    assert b.claim("plan", "worker-b") == "worker-a"  # the earlier claimant holds it
    for c in (a, b):
        c.close()


def test_plan_evaluator_caches_measurements():
    task = TinyTask(tiny_model())
    cache = EvalCache()
    ev = PlanEvaluator(task, cache=cache)
    x, y = task.data["val"][0]
    with torch.no_grad():
        expected_fp32 = float(task.model(x)[:, 0].mean())
    assert ev.fp32_accuracy == pytest.approx(expected_fp32)
    assert task.calls == 1

    plan = QuantPlan({"0": QuantSpec(w_bits=4), "3": QuantSpec(w_bits=4)})
    acc, hit = ev(plan)
    assert not hit and ev.real_evaluations == 1 and ev.cached(plan) == acc
    assert acc != pytest.approx(expected_fp32, abs=1e-6)  # 4-bit weights move the output
    again, hit = ev(plan)
    assert hit and again == acc and ev.real_evaluations == 1 and task.calls == 2

    # a second evaluator on the same cache, model, data and seed reuses every measurement
    ev2 = PlanEvaluator(task, cache=cache)
    assert (
        ev2.key(plan) == ev.key(plan) and ev2(plan) == (acc, True) and ev2.fp32_accuracy == ev.fp32_accuracy
    )
    assert task.calls == 2
    other = QuantPlan({"0": QuantSpec(w_bits=8), "3": QuantSpec(w_bits=4)})
    assert ev.key(other) != ev.key(plan) and ev.cached(other) is None


def test_evaluation_prefix_tracks_what_accuracy_depends_on():
    task = TinyTask(tiny_model())
    prefix = evaluation_prefix(task, "val", 0)
    assert len(prefix) == 24 and prefix == evaluation_prefix(task, "val", 0)
    assert evaluation_prefix(task, "test", 0) != prefix
    assert evaluation_prefix(task, "val", 1) != prefix
    with torch.no_grad():
        task.model[0].weight[0, 0, 0, 0] += 1.0
    assert evaluation_prefix(task, "val", 0) != prefix


def test_predicted_accuracy():
    class DropTable:
        def predict(self, plans):
            return [sum(10.0 / s.w_bits for _, s in p.items()) for p in plans]

    pred = PredictedAccuracy(DropTable(), 0.9)
    plans = [
        QuantPlan({"0": QuantSpec(w_bits=4)}),
        QuantPlan({"0": QuantSpec(w_bits=2), "3": QuantSpec(w_bits=8)}),
    ]
    assert pred.batch(plans) == pytest.approx([0.9 - 2.5 / 100, 0.9 - 6.25 / 100])
    assert pred(plans[0]) == pytest.approx(0.875)
    with pytest.raises(ValueError, match="only knows quantization"):
        pred(QuantPlan({"0": QuantSpec(w_bits=8, sparsity=0.5)}))


def test_plan_evaluator_applies_ptq_and_keys_it():
    task = TinyTask(tiny_model())
    cache = EvalCache()
    plan = QuantPlan({"0": QuantSpec(w_bits=4), "3": QuantSpec(w_bits=4)})
    plain = PlanEvaluator(task, cache=cache)
    with_bc = PlanEvaluator(task, cache=cache, ptq=("bias_correction",))
    assert with_bc.key(plan) != plain.key(plan)
    acc_plain, _ = plain(plan)
    acc_bc, hit = with_bc(plan)
    assert not hit and acc_bc != pytest.approx(acc_plain, abs=1e-7)  # the corrected biases move the output
