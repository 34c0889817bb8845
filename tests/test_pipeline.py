"""The pipeline stage functions: config and plan validation, and evaluate_plan on the cached digits_cnn task."""

from __future__ import annotations

import pytest
import torch

from workbench.devices import DeviceError
from workbench.pipeline import (
    PipelineConfig,
    PlanResult,
    evaluate_plan,
    make_task,
    resolve_plan,
    results_table,
)
from workbench.quant import PlanError, QuantPlan, QuantSpec


# -- validation ---------------------------------------------------------------------------------------------
def test_pipeline_config_names_a_bad_device():
    assert PipelineConfig().device is None
    assert PipelineConfig(device=torch.device("cpu")).device == "cpu"  # normalised to its name
    with pytest.raises(DeviceError, match="'gpu' not understood"):
        PipelineConfig(device="gpu")
    with pytest.raises(DeviceError, match="got int"):
        PipelineConfig(device=3)


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="the machine has a cuda:7")
def test_pipeline_config_names_a_missing_cuda_device():
    with pytest.raises(DeviceError, match="'cuda:7'"):
        PipelineConfig(device="cuda:7")


def test_make_task_needs_a_data_root_for_a_dataset():
    with pytest.raises(ValueError, match="dataset 'flowers' needs data_root"):
        make_task("resnet18", dataset="flowers")


def test_resolve_plan_accepts_plans_shorthands_and_files(digits_cnn_task, tmp_path):
    model = digits_cnn_task.model
    plan = QuantPlan.from_shorthand("uniform:w4a8", model)
    assert resolve_plan(plan, model) is plan
    short = resolve_plan("uniform:w4a8", model)
    assert short.to_dict() == plan.to_dict() and set(short.layers) == {"conv1", "conv2", "fc1", "fc2"}
    path = plan.save(tmp_path / "p.json")
    assert resolve_plan(path, model).to_dict() == plan.to_dict()
    assert resolve_plan(str(path), model).to_dict() == plan.to_dict()


def test_resolve_plan_names_bad_text_and_unfitting_files(digits_cnn_task, tmp_path):
    model = digits_cnn_task.model
    with pytest.raises(PlanError, match="plan 'w4a8' is neither a JSON file nor a shorthand"):
        resolve_plan("w4a8", model)
    with pytest.raises(PlanError, match="neither a JSON file"):
        resolve_plan("x" * 5000, model)  # longer than any file name: still a clean PlanError
    bad = QuantPlan({"conv9": QuantSpec()}).save(tmp_path / "bad.json")
    with pytest.raises(PlanError, match=f"plan file {bad} does not fit the model: .*'conv9'"):
        resolve_plan(bad, model)
    wrong = QuantPlan({"conv1": QuantSpec(channel_bits=(4, 8))}).save(tmp_path / "cb.json")
    with pytest.raises(PlanError, match="channel_bits has 2 entries"):
        resolve_plan(wrong, model)


# -- evaluate_plan --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fp32_result(digits_cnn_task) -> PlanResult:
    return evaluate_plan(digits_cnn_task, QuantPlan({}), name="FP32")


def test_fp32_plan_reproduces_the_task_evaluation(digits_cnn_task, fp32_result):
    r = fp32_result
    own = digits_cnn_task.evaluate(digits_cnn_task.model, "test")
    assert r.fp32_accuracy == own and r.accuracy == own
    assert r.accuracy_drop_pp == 0.0
    assert r.size_bytes == r.fp32_size_bytes and r.avg_weight_bits == 32.0 and r.avg_act_bits == 32.0
    # float32 weights: 4 bytes per parameter of the quantizable layers
    n_params = sum(p.numel() for p in digits_cnn_task.model.parameters())
    assert r.fp32_size_bytes == 4 * n_params
    d = r.to_dict()
    assert d["compression"] == 1.0 and d["name"] == "FP32" and "plan" not in d and "model" not in d
    assert r.model is None


def test_int8_plan_is_within_two_points_and_four_times_smaller(digits_cnn_task, fp32_result, tmp_path):
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", digits_cnn_task.model)
    packed = tmp_path / "m.wbq"
    r = evaluate_plan(
        digits_cnn_task,
        plan,
        name="INT8",
        fp32_accuracy=fp32_result.fp32_accuracy,
        packed_path=packed,
        keep_model=True,
    )
    assert r.fp32_accuracy == fp32_result.accuracy
    assert abs(r.accuracy_drop_pp) <= 2.0
    assert r.accuracy_drop_pp == pytest.approx(100.0 * (r.fp32_accuracy - r.accuracy))
    assert r.avg_weight_bits == 8.0 and r.avg_act_bits == 8.0
    # 8-bit weights are a quarter of float32; per-channel scales and float biases add a little on top
    assert r.fp32_size_bytes / 4 < r.size_bytes < r.fp32_size_bytes / 3.5
    assert (
        r.bops * 16 == fp32_result.bops
    )  # (32 x 32) / (8 x 8) bit operations per MAC, every layer quantized
    assert packed.stat().st_size == r.packed_bytes and r.packed_bytes >= r.size_bytes
    assert r.model is not None and r.model is not digits_cnn_task.model
    assert digits_cnn_task.evaluate(r.model, "test") == r.accuracy  # the kept model is the one measured
    with pytest.raises(FileExistsError, match="overwrite=True"):
        evaluate_plan(digits_cnn_task, plan, fp32_accuracy=r.fp32_accuracy, packed_path=packed)
    table = results_table([fp32_result, r])
    assert list(table.columns) == [
        "name", "accuracy", "accuracy_drop_pp", "size_bytes", "packed_bytes", "compression",
        "avg_weight_bits", "avg_act_bits", "bops", "weight_coverage",
    ]  # fmt: skip
    assert table["name"].tolist() == ["FP32", "INT8"]
    assert table["weight_coverage"].tolist() == [0.0, 1.0]  # every weight layer of the CNN quantized
    assert table["compression"].tolist() == pytest.approx([1.0, r.fp32_size_bytes / r.size_bytes])


# -- prepare_search: what a search needs, built with the defaults --------------------------------------------
def test_prepare_search_builds_only_what_the_strategy_needs(digits_cnn_task, monkeypatch):
    import workbench.pipeline as pipeline
    import workbench.search.inputs as inputs
    from workbench.search import SearchConfig, SearchError, SpaceConfig

    calls: list[tuple] = []
    monkeypatch.setattr(
        inputs, "search_sensitivity", lambda task, c: calls.append(("sens", c.strategy)) or "S"
    )
    monkeypatch.setattr(
        pipeline, "default_predictor", lambda task, sens, **kw: calls.append(("pred", sens, kw)) or "P"
    )
    cfg = {"storage": ":memory:", "track": False}
    cold = SearchConfig(strategy="tpe", warm_start=None, **cfg)
    assert pipeline.prepare_search(digits_cnn_task, cold) == (None, None)
    assert calls == []
    assert pipeline.prepare_search(digits_cnn_task, SearchConfig(strategy="ilp", **cfg)) == ("S", None)
    assert calls == [("sens", "ilp")]
    given = pipeline.prepare_search(digits_cnn_task, SearchConfig(strategy="greedy", **cfg), sensitivity="G")
    assert given == ("G", None) and len(calls) == 1
    calls.clear()
    weight_only = SpaceConfig(w_bits=(3, 4, 16), a_bits=(32,))
    out = pipeline.prepare_search(
        digits_cnn_task, SearchConfig(strategy="control", space=weight_only, **cfg), sensitivity="G"
    )
    assert out == ("G", "P")
    assert calls == [("pred", "G", {"seed": 0, "a_bits": (32,), "w_bits": (3, 4)})]
    calls.clear()
    predicted = SearchConfig(accuracy="predicted", **cfg)  # auto on the predictor: TPE from auto's front
    assert predicted.strategy == "tpe" and predicted.warm_start == "auto"
    assert pipeline.prepare_search(digits_cnn_task, predicted) == ("S", "P")
    assert calls == [("sens", "tpe"), ("pred", "S", {"seed": 0})]
    calls.clear()
    prune = SpaceConfig(methods=("quantize", "prune"))
    with pytest.raises(SearchError, match="only knows quantization"):  # refused before any costly work
        pipeline.prepare_search(digits_cnn_task, SearchConfig(accuracy="predicted", space=prune, **cfg))
    assert calls == []


def test_prepare_search_reads_a_joined_study_s_stored_config(
    digits_cnn_task, monkeypatch, tmp_path, one_torch_thread
):
    import numpy as np

    import workbench.pipeline as pipeline
    from workbench.search import SearchConfig, SearchError, SpaceConfig, run_search

    class Lookup:
        info: dict = {}

        def predict(self, plans):
            return np.array([sum(8 - s.w_bits for _, s in p.items()) for p in plans], dtype=float)

    url = f"sqlite:///{tmp_path}/s.db"
    out = {"track": False, "progress": False}
    config = SearchConfig(
        strategy="random", accuracy="predicted", budget=3, storage=url, study_name="p", final_split=None,
        space=SpaceConfig(w_bits=(4, 8)), **out,
    )  # fmt: skip
    run_search(digits_cnn_task, config, predictor=Lookup())
    built: list = []
    monkeypatch.setattr(pipeline, "default_predictor", lambda task, sens, **kw: built.append(kw) or Lookup())
    join = SearchConfig(storage=url, study_name="p", **out)
    sens, pred = pipeline.prepare_search(digits_cnn_task, join, join=True)
    assert sens is None and isinstance(pred, Lookup) and built == [{"seed": 0}]
    result = pipeline.search_with_defaults(digits_cnn_task, join, join=True)
    assert len(result.trials) == 3 and (result.trials["accuracy_source"] == "predicted").all()
    with pytest.raises(SearchError, match="does not exist"):
        pipeline.prepare_search(digits_cnn_task, SearchConfig(storage=url, study_name="nope"), join=True)


def test_the_pipeline_shows_the_default_search_beside_uniform_at_equal_bits():
    from workbench.pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig(model="digits_cnn", plans=(("INT8 per-channel", "uniform:w8a8:per_channel"),),
                         profile_batches=1, split="val", progress=False, track=False, search_bits=(4.0,),
                         search_evaluations=6)  # fmt: skip
    table = run_pipeline(cfg).table.set_index("name")
    assert list(table.index) == ["FP32", "INT8 per-channel", "INT4 per-channel", "mixed <= 4 bits (search)"]
    mixed, uniform = table.loc["mixed <= 4 bits (search)"], table.loc["INT4 per-channel"]
    assert mixed["avg_weight_bits"] <= 4.0 + 1e-9  # every layer is searched: the whole model's average
    assert (
        mixed["accuracy"] >= uniform["accuracy"]
    )  # uniform W4 is one of the plans the search measured on val


def test_resolve_plan_names_a_directory_and_a_missing_file(digits_cnn_task, tmp_path):
    model = digits_cnn_task.model
    with pytest.raises(PlanError, match=f"plan '{tmp_path}' is a directory"):
        resolve_plan(tmp_path, model)
    with pytest.raises(PlanError, match="plan file 'plans/best.json' does not exist"):
        resolve_plan("plans/best.json", model)
    with pytest.raises(PlanError, match="plan file 'best.json' does not exist"):
        resolve_plan("best.json", model)
