"""analyze_sensitivity end to end: table schema and coverage, bad tasks and data, no UI or MLflow imports."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
from torch import nn

from tests.sensitivity.helpers import QUIET, _tiny_mlp
from workbench.sensitivity import (
    CHANNEL_COLUMNS,
    COST_BENEFIT_COLUMNS,
    LAYER_COLUMNS,
    TABLE_COLUMNS,
    SensitivityConfig,
    analyze_sensitivity,
)
from workbench.tasks import Task


def test_table_schema_and_coverage(cnn_task, cnn_result):
    r, cfg = cnn_result, SensitivityConfig()
    assert list(r.table.columns) == TABLE_COLUMNS
    assert list(r.layers.columns[: len(LAYER_COLUMNS)]) == LAYER_COLUMNS
    assert list(r.channels.columns) == CHANNEL_COLUMNS
    assert list(r.cost_benefit.columns) == COST_BENEFIT_COLUMNS
    assert r.layer_names == ["conv1", "conv2", "fc1", "fc2"]
    assert list(r.layers["depth"]) == [0, 1, 2, 3]
    t = r.table
    n_layers = len(r.layer_names)
    for metric in ("output_mse", "output_kl", "acc_drop", "omega"):
        w = t[(t.metric == metric) & (t.kind == "weight")]
        assert len(w) == n_layers * len(cfg.w_bits) * len(cfg.granularities), metric
        assert set(w["a_bits"]) == {32}
    for metric in ("output_mse", "output_kl", "acc_drop"):
        a = t[(t.metric == metric) & (t.kind == "activation")]
        assert (
            len(a) == n_layers * len(cfg.a_bits)
            and set(a["w_bits"]) == {32}
            and set(a["granularity"]) == {"per_tensor"}
        )
    for metric in ("hessian_trace", "fisher"):
        rows = t[t.metric == metric]
        assert len(rows) == n_layers and set(rows["kind"]) == {"layer"}
    assert r.layers["hutchinson_iters"].between(cfg.hutchinson_min_iter, cfg.hutchinson_max_iter).all()
    assert (r.layers["hessian_trace"] > 0).all() and (r.layers["fisher"] > 0).all()
    counts = r.channels[r.channels.metric == "omega"].groupby("layer").size()
    out_ch = r.layers.set_index("layer")["out_channels"]
    assert (counts == out_ch[counts.index] * len(cfg.w_bits)).all()
    assert r.matrix("output_mse").shape == (n_layers, len(cfg.w_bits))
    assert r.info["source"] == "computed" and r.info["calib_samples"] == 128
    assert 0.9 < r.info["fp32_val_accuracy"] <= 1.0


def test_bad_tasks_and_data():
    model, batches = _tiny_mlp()
    one = [(batches[0][0][:1], batches[0][1][:1])]

    def task(calib) -> Task:
        return Task(
            name="t",
            model=model,
            calib_loader=calib,
            val_loader=batches,
            test_loader=batches,
            input_shape=(5,),
        )

    cfg = SensitivityConfig(metrics=("output_mse",), **QUIET)
    with pytest.raises(ValueError, match="at least 2 labelled samples, got 1"):
        analyze_sensitivity(task(one), cfg, cache=False)
    with pytest.raises(ValueError, match="at least 2 labelled samples, got 0"):
        analyze_sensitivity(task([]), cfg, cache=False)
    with pytest.raises(ValueError, match="without targets"):  # inputs alone: label-free metrics only
        labels_needed = replace(cfg, metrics=("output_mse", "fisher"))
        analyze_sensitivity(task([batches[0][0]]), labels_needed, cache=False)
    assert not analyze_sensitivity(task([batches[0][0]]), cfg, cache=False).table.empty
    with pytest.raises(ValueError, match="SensitivityConfig"):
        analyze_sensitivity(task(batches), {"w_bits": (4,)}, cache=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no quantizable layers"):
        analyze_sensitivity(
            Task(name="t", model=nn.Tanh(), calib_loader=batches, val_loader=batches, test_loader=batches,
                 input_shape=(5,)),
            cfg,
            cache=False,
        )  # fmt: skip


def test_task_like_objects_are_checked_and_completed():
    model, batches = _tiny_mlp()
    cfg = SensitivityConfig(metrics=("output_mse",), **QUIET)
    r = analyze_sensitivity(SimpleNamespace(model=model, calib_loader=batches), cfg, cache=False)
    assert (
        r.info["task"] == "Sequential"
        and r.info["metric_name"] == "accuracy"
        and r.info["output_key"] is None
    )
    assert not r.table.empty
    with pytest.raises(ValueError, match=r"missing 'calib_loader'\), got SimpleNamespace"):
        analyze_sensitivity(SimpleNamespace(model=model), cfg, cache=False)


def test_sensitivity_imports_no_ui_or_mlflow():
    import ast
    import importlib
    import inspect as _inspect
    import pkgutil

    import workbench.sensitivity as mod

    modules = [mod] + [
        importlib.import_module(f"{mod.__name__}.{m.name}") for m in pkgutil.iter_modules(mod.__path__)
    ]
    trees = [ast.parse(_inspect.getsource(m)) for m in modules]  # the package and every part of it
    imported = {
        alias.name.split(".")[0]
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert not imported & {"plotly", "ipywidgets", "mlflow"}


def test_layer_filters_select_the_analysed_layers(cnn_task, cnn_result):
    cfg = SensitivityConfig(**QUIET, include=("conv*", "fc1"), exclude="conv1", metrics=("output_mse", "hessian"),
                            a_bits=(), granularities=("per_channel",))  # fmt: skip
    r = analyze_sensitivity(cnn_task, cfg, cache=False)
    assert r.layer_names == ["conv2", "fc1"] and set(r.table["layer"]) == {"conv2", "fc1"}
    assert list(r.layers["depth"]) == [1, 2]  # forward positions in the whole model
    full = cnn_result.table
    for layer in ("conv2", "fc1"):  # a filtered probe is the same probe as in the full analysis
        pick = [(t.metric == "output_mse") & (t.layer == layer) & (t.granularity == "per_channel")
                & (t.w_bits == 4) for t in (r.table, full)]  # fmt: skip
        assert float(r.table[pick[0]]["value"].iloc[0]) == pytest.approx(
            float(full[pick[1]]["value"].iloc[0])
        )
    with pytest.raises(ValueError, match=r"'nope\*' matches none of the quantizable layers \['conv1'"):
        analyze_sensitivity(cnn_task, replace(cfg, include=("nope*",)), cache=False)
    with pytest.raises(ValueError, match="leave no layer"):
        analyze_sensitivity(cnn_task, replace(cfg, include=("fc1",), exclude=("fc*",)), cache=False)
    with pytest.raises(ValueError, match="name patterns"):
        SensitivityConfig(include=("",))
