"""BitWidthExplorer and the search figures, without a kernel: controls drive the plan, the values and the plot."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from workbench.quant.spec import PlanError, QuantPlan
from workbench.search.objectives import CostModel
from workbench.search.space import SearchSpace, SpaceConfig
from workbench.ui.explorer import CURRENT, BitWidthExplorer
from workbench.ui.search import (
    front_of,
    hypervolume_figure,
    pareto_figure,
    strategy_comparison_figure,
    strategy_table,
)

FP32_ACC = 0.98


class LookupPredictor:
    """Accuracy from a per-(layer, w_bits) drop table: a stand-in for PredictedAccuracy."""

    fp32_accuracy = FP32_ACC
    DROP = {2: 0.05, 3: 0.02, 4: 0.01, 6: 0.002, 8: 0.0005, 16: 0.0}

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, plan: QuantPlan) -> float:
        self.calls += 1
        return FP32_ACC - sum(self.DROP.get(spec.w_bits, 0.0) for _, spec in plan.items())


class FakeEvaluator:
    def __init__(self, accuracy: float) -> None:
        self.accuracy = accuracy
        self.plans: list[QuantPlan] = []

    def __call__(self, plan: QuantPlan) -> tuple[float, bool]:
        self.plans.append(plan)
        return self.accuracy, False


@pytest.fixture(scope="module")
def setup(digits_cnn_task):
    task = digits_cnn_task
    space = SearchSpace(task.model)
    cost_model = CostModel(task.model, task.example_input(), fp32_latency_ms=1.0)
    return task, space, cost_model


def _front(space: SearchSpace, cost_model: CostModel) -> pd.DataFrame:
    plans = [
        ("uniform w2", space.uniform_plan(2)),
        (
            "mixed",
            space.plan_from_params({"conv1/w_bits": 8, "conv2/w_bits": 4, "fc1/w_bits": 2, "fc2/w_bits": 6}),
        ),
        ("uniform w4", space.uniform_plan(4)),
        ("uniform w8", space.uniform_plan(8)),
    ]
    rows = []
    for i, (label, plan) in enumerate(plans):
        cost = cost_model(plan)
        rows.append(
            {
                "trial": i,
                "label": label,
                "accuracy": 0.90 + 0.02 * i,
                "accuracy_source": "measured",
                "feasible": True,
                **cost.to_dict(),
                "plan": plan.to_json(indent=None),
                "test_accuracy": 0.89 + 0.02 * i,
            }
        )
    return pd.DataFrame(rows).sort_values("weight_bytes").reset_index(drop=True)


def test_controls_drive_values(setup):
    _, space, cost_model = setup
    pred = LookupPredictor()
    ex = BitWidthExplorer(space, cost_model, predicted=pred, track=False)
    assert ex.plan == space.uniform_plan(8)
    keys = {"predicted_accuracy", "measured_accuracy", "size_bytes", "size_fraction", "weight_bytes",
            "weight_fraction", "bops", "latency_ms", "avg_weight_bits"}  # fmt: skip
    assert keys <= set(ex.values)
    before = dict(ex.values)
    assert before["weight_bytes"] == cost_model(space.uniform_plan(8)).weight_bytes
    assert before["avg_weight_bits"] == pytest.approx(8.0)
    assert before["latency_ms"] == pytest.approx(cost_model(space.uniform_plan(8)).latency_ms)

    ex.set("fc1", "w_bits", 2)
    expected_plan = space.plan_from_params({**space.params_from_plan(space.uniform_plan(8)), "fc1/w_bits": 2})
    assert ex.plan == expected_plan
    # exact weight bytes saved: fc1's weights at 2 instead of 8 bits (scales unchanged)
    saved = cost_model(space.uniform_plan(8)).weight_bytes - cost_model(expected_plan).weight_bytes
    fc1_params = cost_model.weight_params["fc1"]
    assert saved == fc1_params * (8 - 2) // 8 > 0
    assert before["weight_bytes"] - ex.values["weight_bytes"] == saved
    assert ex.values["predicted_accuracy"] == pytest.approx(before["predicted_accuracy"] - (0.05 - 0.0005))
    assert ex.values["avg_weight_bits"] < before["avg_weight_bits"]
    assert ex.values["source"] == "edited"
    assert "n/a" not in ex.summary.value and f"{ex.values['weight_bytes']:,} bytes" in ex.summary.value

    # a UI change (the dropdown itself) recomputes too
    ex.controls[("fc1", "w_bits")].value = 8
    assert ex.values["weight_bytes"] == before["weight_bytes"]

    with pytest.raises(PlanError, match="not a choice"):
        ex.set("fc1", "w_bits", 5)
    with pytest.raises(PlanError, match="has no knob"):
        ex.set("fc1", "bogus", 5)
    with pytest.raises(PlanError, match="unknown unit"):
        ex.set("nope", "w_bits", 4)

    ex.set_all("w_bits", 4)
    assert ex.plan == space.uniform_plan(4)


def test_without_predictor_and_with_compression(digits_cnn_task):
    task = digits_cnn_task
    space = SearchSpace(task.model, SpaceConfig(methods=("quantize", "prune", "lowrank", "none")))
    cost_model = CostModel(task.model, task.example_input(), fp32_latency_ms=1.0)
    ex = BitWidthExplorer(space, cost_model, track=False)
    assert ex.values["predicted_accuracy"] is None and ex.values["predicted_note"] == "no predictor given"
    assert ("conv2", "sparsity") in ex.controls and ("conv2", "rank_ratio") in ex.controls
    assert ex.controls[("conv2", "sparsity")].disabled  # quantize: sparsity is ignored
    ex.set("conv2", "method", "prune")
    assert not ex.controls[("conv2", "sparsity")].disabled
    ex.set("conv2", "sparsity", 0.5)
    assert ex.plan["conv2"].sparsity == 0.5

    pred = LookupPredictor()
    ex2 = BitWidthExplorer(space, cost_model, predicted=pred, plan=ex.plan, track=False)
    assert ex2.plan == ex.plan
    assert (
        ex2.values["predicted_accuracy"] is None and "only knows quantization" in ex2.values["predicted_note"]
    )
    assert "n/a" in ex2.summary.value and pred.calls == 0
    ex2.set("conv2", "method", "none")
    assert "conv2" not in ex2.plan
    assert ex2.values["predicted_accuracy"] is not None


def test_load_front_evaluate_and_figure(setup):
    _, space, cost_model = setup
    front = _front(space, cost_model)
    ev = FakeEvaluator(0.9612)
    ex = BitWidthExplorer(
        space, cost_model, predicted=LookupPredictor(), evaluator=ev, front=front, track=False
    )
    assert len(ex.front_plans) == 4
    for i in range(4):
        plan = ex.load_front(i)
        assert plan == QuantPlan.from_dict(json.loads(front["plan"][i]))
        assert ex.plan == plan
        assert ex.values["weight_bytes"] == front["weight_bytes"][i]
        assert ex.values["source"].startswith(f"front #{i}")
    mixed = front.index[front["label"] == "mixed"][0]
    ex.load_front(int(mixed))
    assert ex.controls[("fc1", "w_bits")].value == 2 and ex.controls[("conv1", "w_bits")].value == 8

    # the current marker sits at the plan's weight size (% of FP32) and predicted accuracy
    cur = next(t for t in ex.figure.data if t.name == CURRENT)
    assert cur.x[0] == pytest.approx(100.0 * ex.values["weight_fraction"])
    assert cur.y[0] == pytest.approx(100.0 * ex.values["predicted_accuracy"])
    assert ex.evaluate() == pytest.approx(0.9612)
    assert ev.plans == [ex.plan] and ex.values["measured_accuracy"] == pytest.approx(0.9612)
    cur = next(t for t in ex.figure.data if t.name == CURRENT)
    assert cur.y[0] == pytest.approx(96.12)  # measured beats predicted
    ex.set("fc2", "w_bits", 16)
    assert ex.values["measured_accuracy"] is None  # another plan: not measured
    assert ex.figure.layout.title.text and ex.figure.layout.xaxis.title.text

    with pytest.raises(IndexError):
        ex.load_front(9)
    no_eval = BitWidthExplorer(space, cost_model, track=False)
    assert no_eval.evaluate_button.disabled
    with pytest.raises(ValueError, match="no evaluator"):
        no_eval.evaluate()
    with pytest.raises(ValueError, match="no front"):
        no_eval.load_front(0)


def test_log(setup, tmp_path, monkeypatch):
    _, space, cost_model = setup
    ex = BitWidthExplorer(space, cost_model, predicted=LookupPredictor(), track=False)
    assert ex.log() is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("WORKBENCH_TRACKING", raising=False)
    monkeypatch.setenv("WORKBENCH_TRACKING", "0")
    tracked = BitWidthExplorer(space, cost_model, predicted=LookupPredictor(), track=True)
    assert tracked.log() is None  # globally disabled
    monkeypatch.delenv("WORKBENCH_TRACKING")
    tracked.set("conv1", "w_bits", 4)
    run_id = tracked.log()
    assert run_id
    from mlflow import MlflowClient

    from workbench import tracking

    run = MlflowClient(tracking.tracking_uri()).get_run(run_id)
    assert run.data.tags[tracking.STAGE_TAG] == "explorer"
    assert run.data.params["conv1/w_bits"] == "4"
    assert run.data.metrics["weight_bytes"] == tracked.values["weight_bytes"]
    runs = tracking.runs_frame(stage="explorer")
    assert run_id in set(runs["run_id"])


def test_search_figures(setup):
    _, space, cost_model = setup
    front = _front(space, cost_model)
    fp32_wb = cost_model.fp32_cost.weight_bytes
    dominated = front.iloc[[1]].assign(accuracy=0.5, label="bad", trial=9)
    skipped = front.iloc[[0]].assign(accuracy=0.0, accuracy_source="skipped_over_budget", trial=10)
    trials = pd.concat([front, dominated, skipped], ignore_index=True)
    assert list(front_of(trials)["label"]) == list(front["label"])

    fig = pareto_figure(
        trials,
        fp32_weight_bytes=fp32_wb,
        fp32_accuracy=FP32_ACC,
        current={"accuracy": 0.93, "weight_bytes": 1000},
    )
    assert fig.layout.title.text and "%" in fig.layout.xaxis.title.text and "%" in fig.layout.yaxis.title.text
    names = [t.name for t in fig.data]
    front_trace = fig.data[[n.startswith("Pareto front") for n in names].index(True)]
    assert list(front_trace.y) == pytest.approx(list(100 * front["accuracy"]))
    assert list(front_trace.x) == pytest.approx(list(100 * front["weight_bytes"] / fp32_wb))
    assert sum(len(t.x) for t in fig.data if t.name.startswith("trials")) == 5  # skipped one not drawn
    assert fig.data[-1].x[0] == pytest.approx(100 * 1000 / fp32_wb)
    kib = pareto_figure(trials)
    assert "KiB" in kib.layout.xaxis.title.text
    with pytest.raises(TypeError):
        pareto_figure([1, 2])

    comp = strategy_comparison_figure(
        {"a": front, "b": front.iloc[:2]}, fp32_weight_bytes=fp32_wb, fp32_accuracy=FP32_ACC
    )
    assert [t.name for t in comp.data] == ["a (4)", "b (2)"]
    assert comp.layout.title.text and comp.layout.xaxis.title.text and comp.layout.yaxis.title.text
    test_comp = strategy_comparison_figure({"a": front}, fp32_weight_bytes=fp32_wb, column="test_accuracy")
    assert "test" in test_comp.layout.yaxis.title.text

    one = hypervolume_figure(pd.DataFrame({"strategy": ["tpe", "ilp"], "hypervolume": [0.3, 0.5]}))
    assert list(one.data[0].y) == [0.3, 0.5] and one.data[0].error_y.array is None
    seeds = pd.DataFrame({"strategy": ["tpe"] * 3 + ["ilp"] * 2, "hypervolume": [0.1, 0.3, 0.2, 0.5, 0.4]})
    many = hypervolume_figure(seeds)
    assert list(many.data[0].y) == pytest.approx([0.2, 0.45])
    assert list(many.data[0].error_y.array) == pytest.approx([0.1, 0.05])
    assert list(many.data[0].error_y.arrayminus) == pytest.approx([0.1, 0.05])
    assert many.layout.title.text and many.layout.xaxis.title.text and many.layout.yaxis.title.text


def test_strategy_table(setup):
    _, space, cost_model = setup
    front = _front(space, cost_model)
    fp32_wb = cost_model.fp32_cost.weight_bytes

    class R:  # the SearchResult fields strategy_table reads
        def __init__(self, front: pd.DataFrame, hv: float) -> None:
            self.front, self.trials, self.hypervolume = front, front, hv
            self.real_evaluations, self.seconds, self.fp32_weight_bytes = len(front), 1.0, fp32_wb

    table = strategy_table({"x": R(front, 0.4), "y": R(front.iloc[3:], 0.1)}, max_weight_fraction=1 / 8)
    assert list(table["strategy"]) == ["x", "y"]
    small = front[front["weight_bytes"] <= fp32_wb / 8]
    assert table.loc[0, "best_test_accuracy"] == pytest.approx(small["test_accuracy"].max())
    assert pd.isna(table.loc[1, "best_test_accuracy"])  # its only plan is 8-bit: 1/4 of FP32


def test_all_units_dropdown_sets_every_unit_and_resets_itself(setup):
    """The "all units" row of the grid: choosing 4 bits sets every unit to 4 and the dropdown returns to "-"."""
    _, space, cost_model = setup
    ex = BitWidthExplorer(space, cost_model, predicted=LookupPredictor(), track=False)
    assert set(ex.all_controls) == set(ex.columns)
    ex.all_controls["w_bits"].value = 4
    assert ex.plan == space.uniform_plan(4)
    assert ex.all_controls["w_bits"].value is None


def test_from_result_rebuilds_the_search_s_space_costs_evaluator_and_predictor(setup):
    """BitWidthExplorer.from_result: the explorer of a search result without rebuilding the search's parts."""
    import numpy as np

    from workbench.search import SearchConfig, SearchResult

    task, _, cost_model = setup

    class Drops:
        def predict(self, plans):
            return np.array([sum(8 - s.w_bits for _, s in p.items()) for p in plans], dtype=float)

    config = SearchConfig(space=SpaceConfig(), split="val", seed=3, storage=":memory:")
    space = SearchSpace(task.model, config.space)
    front = _front(space, cost_model)
    result = SearchResult(
        study_name="s", storage=":memory:", config=config, trials=front, front=front, hypervolume=0.5,
        real_evaluations=4, final_evaluations=0, fp32_accuracy=FP32_ACC, fp32_final_accuracy=None,
        fp32_weight_bytes=cost_model.fp32_cost.weight_bytes, fp32_size_bytes=cost_model.fp32_cost.size_bytes,
        seconds=1.0, info={"fp32_latency_ms": 2.0},
    )  # fmt: skip
    ex = BitWidthExplorer.from_result(result, task, predictor=Drops(), track=False)
    assert [u.name for u in ex.space.units] == [u.name for u in space.units]
    assert ex.space.knob_table() == space.knob_table()
    assert ex.cost_model.fp32_latency_ms == 2.0
    assert ex.evaluator.split == "val" and ex.evaluator.seed == 3
    assert len(ex.front_plans) == len(front) and ex.fp32_accuracy == FP32_ACC
    ex.load_front(0)
    plan = ex.plan
    expected = FP32_ACC - sum(8 - s.w_bits for _, s in plan.items()) / 100
    assert ex.values["predicted_accuracy"] == pytest.approx(expected)
    assert ex.values["weight_bytes"] == cost_model(plan).weight_bytes
    assert BitWidthExplorer.from_result(result, task).predicted is None
