"""Deployment on real kernels of this CPU: kernels chosen, low-bit grids kept exactly, accuracy, no mutation."""

from __future__ import annotations

import copy

import pytest
import torch

from workbench.hardware import DispatchWarning, ProfileError
from workbench.hardware.deploy import Bf16Layer, DeployConfig, deploy, measure_deployment, time_side_by_side
from workbench.hardware.kernels import Int4WeightOnlyLinear
from workbench.quant.spec import QuantPlan, QuantSpec
from workbench.quant.swap import quant_modules, quantize_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_int8_plan_runs_quantized_kernels_at_fp32_accuracy(digits_cnn_task):
    task = digits_cnn_task
    before = _state(task.model)
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", task.model)
    dep = deploy(task.model, plan, task.calib_loader)
    table = dep.table()
    assert set(table["precision"]) == {"int8"}
    assert all(".quantized." in k for k in table["kernel"]), table["kernel"].tolist()
    assert "quantize_per_tensor" in dep.module.code  # FX put the boundary conversions in
    fp32, acc = task.evaluate(), task.evaluate(dep.module)
    assert acc >= fp32 - 0.01, (fp32, acc)
    after = _state(task.model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_low_bit_weights_keep_their_grid_inside_the_int8_container(digits_cnn_task):
    task = digits_cnn_task
    plan = QuantPlan.from_shorthand("uniform:w4a8:per_channel", task.model)
    dep = deploy(task.model, plan, task.calib_loader)
    fake = quantize_model(task.model, plan, task.calib_loader)
    mods = dict(dep.module.named_modules())
    for name, qm in quant_modules(fake).items():
        w = mods[name]._weight_bias()[0]  # the int8 weight the quantized kernel multiplies with
        codes = w.int_repr()
        assert codes.abs().max() <= 7 and codes.abs().max() == 7, name  # a 4-bit symmetric grid: -7..7
        with torch.no_grad():
            ours = qm.quantized_weight()
        torch.testing.assert_close(w.dequantize(), ours, rtol=0, atol=1e-6)  # the same 4-bit weights exactly
    acc_fake, acc_dep = task.evaluate(fake), task.evaluate(dep.module)
    assert abs(acc_fake - acc_dep) <= 0.02, (acc_fake, acc_dep)


def test_mixed_plan_dispatches_int8_bf16_and_fp32(digits_cnn_task):
    task = digits_cnn_task
    plan = QuantPlan(
        {
            "conv1": QuantSpec(w_bits=8, a_bits=8),
            "conv2": QuantSpec(w_bits=8, a_bits=8),
            "fc1": QuantSpec(w_bits=16, a_bits=16),
            "fc2": QuantSpec(w_bits=4, a_bits=32),  # weight-only: 4-bit weights, float activations
        }
    )
    dep = deploy(task.model, plan, task.calib_loader)
    assert dep.precision_counts() == {"int8": 2, "bf16": 1, "fp32": 1}
    mods = dict(dep.module.named_modules())
    assert isinstance(mods["fc1"], Bf16Layer) and next(mods["fc1"].parameters()).dtype == torch.bfloat16
    assert isinstance(mods["fc2"], Int4WeightOnlyLinear)  # the kernel menu's int4 weight-only kernel
    assert any(n.startswith("fc2: linear kernel int4_weight_only") for n in dep.notes)
    x = task.example_input(64)
    with torch.no_grad():
        agree = (dep.module(x).argmax(1) == task.model(x).argmax(1)).float().mean()
    assert agree >= 0.95
    # without the menu: float compute, the 4-bit weights baked in
    dep = deploy(task.model, plan, task.calib_loader, weight_only_kernels=False)
    mods = dict(dep.module.named_modules())
    assert type(mods["fc2"]) is torch.nn.Linear
    assert any("fc2: weight-only 4-bit" in n for n in dep.notes)
    with torch.no_grad():
        codes = mods["fc2"].weight / (mods["fc2"].weight.abs().amax(1, keepdim=True) / 7)
    assert (codes - codes.round()).abs().max() < 1e-4 and len(torch.unique(codes.round())) <= 15  # 4-bit
    x = task.example_input(64)
    with torch.no_grad():
        agree = (dep.module(x).argmax(1) == task.model(x).argmax(1)).float().mean()
    assert agree >= 0.95


def test_missing_kernels_fall_back_or_error_when_strict(digits_cnn_task):
    task = digits_cnn_task
    plan = QuantPlan.from_shorthand("uniform:w4a4:per_channel", task.model)
    with pytest.warns(DispatchWarning, match="no 'int4' kernel for 'conv'.*conv1, conv2"):
        dep = deploy(task.model, plan, task.calib_loader)
    assert set(dep.table()["precision"]) == {"int8"}
    # 4-bit activations keep their 16-level grid on the int8 kernel
    act = dep.module.conv2_input_scale_0 if hasattr(dep.module, "conv2_input_scale_0") else None
    assert act is None or float(act) > 0
    with pytest.raises(ProfileError, match="strict"):
        deploy(task.model, plan, task.calib_loader, strict=True)


def test_bad_input_is_refused_with_named_errors(digits_cnn_task):
    task = digits_cnn_task
    plan = QuantPlan.from_shorthand("uniform:w8a8", task.model)
    with pytest.raises(ValueError, match="engine='tpu'"):
        deploy(task.model, plan, task.calib_loader, engine="tpu")
    with pytest.raises(ValueError, match="calibration data is empty"):
        deploy(task.model, plan, [])
    with pytest.raises(ValueError, match="plan must be a QuantPlan"):
        deploy(task.model, {"conv1": {}}, task.calib_loader)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        DeployConfig(batch_size=0)


def test_measure_deployment_reports_both_models_side_by_side(digits_cnn_task):
    task = digits_cnn_task
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", task.model)
    res = measure_deployment(
        task.model,
        plan,
        task.calib_loader,
        example_input=task.example_input(32),
        evaluate=task.evaluate,
        config=DeployConfig(batch_size=32, repeats=3, warmup=1, threads=1),
    )
    d = res.to_dict()
    for key in (
        "fp32_latency_ms",
        "deployed_latency_ms",
        "speedup",
        "fp32_accuracy",
        "accuracy",
        "batch_size",
        "threads",
    ):
        assert key in d
    assert res.batch_size == 32 and res.threads == 1 and len(res.fp32.times_ms) == 3
    assert res.speedup == pytest.approx(res.fp32_latency_ms / res.deployed_latency_ms)
    assert res.accuracy >= res.fp32_accuracy - 0.01 and res.top1_agreement >= 0.95
    assert res.estimated_latency_ms > 0 and res.precision_counts == {"int8": 4}


def test_time_side_by_side_interleaves_and_restores_threads():
    calls: list[str] = []
    fns = {"a": lambda x: calls.append("a"), "b": lambda x: calls.append("b")}
    before = torch.get_num_threads()
    stats = time_side_by_side(fns, torch.zeros(1), repeats=3, warmup=1, threads=1)
    assert calls == ["a", "b"] * 4 and torch.get_num_threads() == before
    assert len(stats["a"].times_ms) == 3 and stats["a"].min_ms <= stats["a"].median_ms <= stats["a"].max_ms


def test_bf16_wrapper_matches_float_closely():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 8, 3, padding=1).eval()
    wrapped = Bf16Layer(copy.deepcopy(conv))
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        ref, out = conv(x), wrapped(x)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_resnet18_mixed_plans_deploy_and_fuse_conv_bn_relu():
    from workbench.models import build_model
    from workbench.quant.introspect import quantizable_layers

    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10).eval()
    layers = quantizable_layers(model)
    calib = [torch.randn(4, 3, 32, 32)]
    x = torch.randn(4, 3, 32, 32)
    int8 = QuantSpec(w_bits=8, a_bits=8)
    plans = {
        "all": QuantPlan({n: int8 for n in layers}),
        "first half": QuantPlan(
            {n: int8 for n in layers[: len(layers) // 2]}
        ),  # int stem -> float maxpool owner
        "ends float": QuantPlan({n: int8 for n in layers[1:-1]}),
    }
    for name, plan in plans.items():
        dep = deploy(model, plan, calib)
        mods = dict(dep.module.named_modules())
        assert type(mods["layer1.0.conv1"]).__name__ == "ConvReLU2d", name  # BN folded, ReLU fused
        with torch.no_grad():
            out = dep.module(x)
        assert out.shape == (4, 10) and torch.isfinite(out).all(), name


def test_measure_deployment_and_compare_kernels_log_the_deploy_run(digits_cnn_task, tmp_path, monkeypatch):
    """``track=True`` logs the run ``workbench deploy`` logs: same name, params, metrics and artifacts."""
    from mlflow import MlflowClient

    from workbench import tracking
    from workbench.hardware.deploy import compare_kernels, kernel_metrics, resolve_engine

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    task = digits_cnn_task
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", task.model)
    cfg = DeployConfig(batch_size=16, repeats=2, warmup=1, threads=1)
    res = measure_deployment(
        task.model, plan, task.calib_loader, example_input=task.example_input(16), config=cfg, track=True,
        name="digits_cnn", plan_name="uniform:w8a8:per_channel",
    )  # fmt: skip
    df = compare_kernels(task, plan, kernels="bf16", config=cfg, track=True, name="digits_cnn")
    measure_deployment(
        task.model, plan, task.calib_loader, example_input=task.example_input(16), config=cfg, track=False
    )
    client = MlflowClient(tracking.tracking_uri())
    runs = tracking.runs_frame(stage="deploy")
    assert len(runs) == 2 and set(runs["tags.mlflow.runName"]) == {"deploy-digits_cnn"}
    static, dynamic = (client.get_run(i) for i in reversed(runs["run_id"].tolist()))  # newest first
    assert static.data.params == {
        "model": "digits_cnn", "plan": "uniform:w8a8:per_channel", "profile": "cpu_measured",
        "kernels": "static", "batch_size": "16", "threads": "1", "repeats": "2", "warmup": "1",
        "engine": resolve_engine("auto"),
        "strict": "false", "max_calib_batches": "8",
    }  # fmt: skip
    assert set(static.data.metrics) == set(res.to_metrics()) and "estimated_latency_ms" in static.data.metrics
    assert static.data.metrics["speedup"] == pytest.approx(res.speedup)
    assert {f.path for f in client.list_artifacts(static.info.run_id, "tables")} == {
        "tables/deployed_layers.csv",
        "tables/deploy_fidelity.csv",
    }
    assert [f.path for f in client.list_artifacts(static.info.run_id, "plans")] == ["plans/plan.json"]
    assert dynamic.data.params["kernels"] == "bf16" and "plan" not in dynamic.data.params
    assert dynamic.data.metrics == pytest.approx(kernel_metrics(df), nan_ok=True)
    assert {"fp32_median_ms", "bf16_median_ms", "bf16_cosine_to_fp32"} <= set(dynamic.data.metrics)
    assert [f.path for f in client.list_artifacts(dynamic.info.run_id, "tables")] == [
        "tables/deployed_variants.csv"
    ]
