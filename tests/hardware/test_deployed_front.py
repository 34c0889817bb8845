"""The deployed (metric, latency) front: plans deployed, timed side by side and scored; verdicts against the
uniform deployments (pure logic on hand-made tables; the timing itself is never asserted)."""

from __future__ import annotations

import copy
import dataclasses
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from workbench.hardware.deployed_front import DeployedFrontConfig, deploy_front, front_plans, front_verdicts
from workbench.quant import QuantPlan
from workbench.quant.spec import QuantSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _table(rows):
    return pd.DataFrame(rows, columns=["plan", "kind", "metric", "measured_ms"])


def test_verdicts_cover_a_uniform_plan_only_with_a_metric_as_good_and_a_latency_within_the_tie():
    table = _table([
        ("uniform fp32", "uniform", 0.99, 10.0),
        ("uniform int8", "uniform", 0.97, 6.0),
        ("searched 1", "searched", 0.98, 5.0),
        ("searched 2", "searched", 0.99, 10.2),  # 2 % slower than fp32: a tie at 1.03, not at 1.01
    ])  # fmt: skip
    v = front_verdicts(table, tie=1.03).set_index("uniform")
    assert v.loc["uniform int8", "covered"] and v.loc["uniform int8", "by"] == "searched 1"
    assert v.loc["uniform fp32", "covered"] and v.loc["uniform fp32", "by"] == "searched 2"
    v = front_verdicts(table, tie=1.01).set_index("uniform")
    assert not v.loc["uniform fp32", "covered"] and pd.isna(v.loc["uniform fp32", "by"])
    assert v.loc["uniform int8", "by_measured_ms"] == 5.0  # the fastest plan that covers it


def test_front_plans_are_named_fastest_first_with_their_estimate_per_batch():
    plans = [QuantPlan({"fc1": QuantSpec(w_bits=b, a_bits=8)}) for b in (8, 4)]
    front = pd.DataFrame(
        {"plan": [p.to_json() for p in plans], "latency_ms": [0.5, 0.25], "accuracy": [1, 0.9]}
    )
    named, est = front_plans(SimpleNamespace(front=front), batch_size=8)
    assert list(named) == ["searched 1", "searched 2"]
    assert named["searched 1"]["fc1"].w_bits == 4 and est == {"searched 1": 2.0, "searched 2": 4.0}
    with pytest.raises(ValueError, match="empty front"):
        front_plans(SimpleNamespace(front=front.iloc[:0]), batch_size=8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"repeats": 0}, "repeats"),
        ({"warmup": -1}, "warmup"),
        ({"threads": 0}, "threads"),
        ({"split": "train"}, "split must be one of"),
        ({"uniform": ("fp32", "int4")}, "int4"),
        ({"tie": 0.9}, "tie"),
    ],
)
def test_bad_config_values_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeployedFrontConfig(**kwargs)


def test_deploy_front_on_digits_cnn(digits_cnn_task):
    task = digits_cnn_task
    before = copy.deepcopy(task.model.state_dict())
    w8 = QuantPlan.from_shorthand("uniform:w8a8:per_channel", task.model)
    mixed = w8.with_layer("fc1", QuantSpec(w_bits=4, a_bits=32))  # weight-only int4 Linear among int8 layers
    cfg = DeployedFrontConfig(batch_size=8, repeats=2, warmup=1, threads=1)
    front = deploy_front(task, {"searched int8": w8, "searched mixed": mixed}, config=cfg)
    t = front.table.set_index("plan")
    assert list(t.index) == [
        "uniform fp32",
        "uniform bf16",
        "uniform int8",
        "searched int8",
        "searched mixed",
    ]
    assert list(t["kind"]) == ["uniform"] * 3 + ["searched"] * 2
    assert t.loc["uniform fp32", "metric"] == task.evaluate(task.model, "test")
    assert (
        t.loc["searched int8", "metric"]
        == t.loc["uniform int8", "metric"]
        >= t.loc["uniform fp32", "metric"] - 0.02
    )
    assert "int4" in t.loc["searched mixed", "kernels"] or "weight" in t.loc["searched mixed", "kernels"]
    assert (t["measured_ms"] > 0).all() and t["estimated_ms"].isna().all()
    # a plan equal to uniform int8 covers it whatever the timing noise (latency tie as wide as we like)
    v = front_verdicts(front.table, tie=1e9).set_index("uniform")
    assert (
        v.loc["uniform int8", "covered"]
        and v.loc["uniform int8", "by_metric"] >= v.loc["uniform int8", "metric"]
    )
    assert front.to_dict()["config"]["batch_size"] == 8 and front.threads == 1
    assert all(
        torch.equal(before[k], v) for k, v in task.model.state_dict().items()
    )  # the caller's model kept
    assert math.isfinite(front.table["metric"].sum())


def test_deploy_front_leaves_a_model_in_training_mode_as_it_is(digits_cnn_task):
    task = dataclasses.replace(digits_cnn_task, model=copy.deepcopy(digits_cnn_task.model).train())
    cfg = DeployedFrontConfig(batch_size=4, repeats=1, warmup=0, threads=1, uniform=("fp32",), split="val")
    front = deploy_front(
        task, {"searched int8": QuantPlan.from_shorthand("uniform:w8a8", task.model)}, config=cfg
    )
    assert task.model.training and len(front.table) == 2


def test_deploy_front_refuses_bad_plans_before_deploying(digits_cnn_task):
    with pytest.raises(ValueError, match="empty"):
        deploy_front(digits_cnn_task, {})
    with pytest.raises(ValueError, match="clash"):
        deploy_front(digits_cnn_task, {"uniform int8": QuantPlan({})})
    with pytest.raises(TypeError, match="QuantPlan"):
        deploy_front(digits_cnn_task, {"a": "uniform:w8a8"})
    with pytest.raises(Exception, match="layer9"):
        deploy_front(digits_cnn_task, {"a": QuantPlan({"layer9": QuantSpec(w_bits=8, a_bits=8)})})
