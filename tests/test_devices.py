"""Devices: names resolved (or refused with the devices this machine has), tasks moved by copy, and every stage
taking ``device=``: the same numbers on ``cpu`` as without it, a clear DeviceError before any work for a device
this machine lacks, int8 deployment refused off the CPU. CUDA-only checks run where CUDA is present."""

from __future__ import annotations

import re
import subprocess
import sys

import pandas as pd
import pytest
import torch

from workbench import devices
from workbench.devices import DeviceError, available_devices, model_device, on_device, resolve_device
from workbench.quant import QuantPlan, QuantSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HAS_CUDA = torch.cuda.is_available()
# a device this machine lacks: CUDA itself, or one CUDA index past the last
BAD = f"cuda:{torch.cuda.device_count()}" if HAS_CUDA else "cuda"
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


def _boom(*args, **kwargs):
    raise AssertionError("expensive work started before the device was checked")


def _bad_device():
    return pytest.raises(DeviceError, match=re.escape(repr(BAD)))


# --------------------------------------------------------------------------------------------- names


def test_cpu_and_none_resolve_to_the_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert available_devices()[0] == "cpu"
    assert issubclass(DeviceError, ValueError)  # the CLI turns it into exit code 2


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is present: the positive path is tested instead")
def test_cuda_without_cuda_names_the_devices_this_machine_has():
    for name in ("cuda", "cuda:0"):
        with pytest.raises(DeviceError, match=rf"{re.escape(repr(name))}.*CUDA is not available.*\['cpu'"):
            resolve_device(name)


@needs_cuda
def test_cuda_resolves_to_an_indexed_device():
    dev = resolve_device("cuda")
    assert dev.type == "cuda" and dev.index == torch.cuda.current_device()
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert f"cuda:{torch.cuda.device_count() - 1}" in available_devices()
    with pytest.raises(DeviceError, match="does not exist"):
        resolve_device(BAD)


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "CUDA", "cuda:", "cuda:-1", " cpu", ""])
def test_malformed_names_are_refused_with_the_valid_choices(name):
    with pytest.raises(DeviceError, match=rf"{re.escape(repr(name))} not understood; use one of \['cpu'"):
        resolve_device(name)


# --------------------------------------------------------------------------------------------- tasks


def test_task_to_its_own_device_is_the_task_itself(digits_cnn_task):
    task = digits_cnn_task
    assert task.device == torch.device("cpu") == model_device(task.model)
    assert task.to("cpu") is task and task.to(torch.device("cpu")) is task
    assert on_device(task, None) is task
    with _bad_device():
        task.to(BAD)


def test_moving_a_task_copies_the_model_and_never_moves_the_callers(digits_cnn_task, monkeypatch):
    task = digits_cnn_task
    original = task.model
    before = {k: (v.data_ptr(), v.clone()) for k, v in original.state_dict().items()}
    real = devices.model_device
    # the only device here is the CPU: make the caller's model look elsewhere so that 'cpu' means a move
    monkeypatch.setattr(devices, "model_device", lambda m: torch.device("meta") if m is original else real(m))
    moved = task.to("cpu")
    assert moved is not task and moved.model is not original and task.model is original
    assert moved.info["device"] == "cpu" and "device" not in task.info
    assert moved.calib_loader is task.calib_loader and moved.name == task.name
    for k, v in original.state_dict().items():  # the caller's tensors: same storage, same values
        assert v.data_ptr() == before[k][0] and torch.equal(v, before[k][1])
    for (k, v), (_, w) in zip(moved.model.state_dict().items(), original.state_dict().items(), strict=True):
        assert torch.equal(v, w) and v.data_ptr() != w.data_ptr(), k


# --------------------------------------------------------------------------------------------- stages on cpu


def test_sensitivity_on_cpu_equals_sensitivity_without_device(digits_cnn_task):
    from workbench.sensitivity import SensitivityConfig, analyze_sensitivity

    cfg = SensitivityConfig(
        w_bits=(4,), a_bits=(8,), granularities=("per_channel",), metrics=("output_mse", "hessian", "fisher"),
        calib_batches=1, hutchinson_max_iter=3, hutchinson_min_iter=1, hutchinson_window=1, progress=False,
    )  # fmt: skip
    a = analyze_sensitivity(digits_cnn_task, cfg, cache=False)
    b = analyze_sensitivity(digits_cnn_task, cfg, cache=False, device="cpu")
    for name in ("table", "layers", "channels", "cost_benefit"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert a.info["device"] == b.info["device"] == "cpu" and len(a.channels) > 0


def test_plan_dataset_on_cpu_equals_plan_dataset_without_device(digits_cnn_task, tmp_path):
    from workbench.predictor import PlanDatasetConfig, build_plan_dataset

    cfg = PlanDatasetConfig(n_random=3, n_stratified=0)
    a = build_plan_dataset(digits_cnn_task, None, cfg, path=tmp_path / "a.jsonl", progress=False)
    b = build_plan_dataset(
        digits_cnn_task, None, cfg, path=tmp_path / "b.jsonl", progress=False, device="cpu"
    )
    assert a.info["key"] == b.info["key"] and b.info["n_measured"] == 3  # measured again, same cache key
    cols = [c for c in a.frame.columns if "seconds" not in c]
    pd.testing.assert_frame_equal(a.frame[cols], b.frame[cols])


def test_search_on_cpu_equals_search_without_device(digits_cnn_task):
    from workbench.search import SearchConfig, run_search
    from workbench.search.space import SpaceConfig

    cfg = SearchConfig(
        strategy="random", budget=2, storage=":memory:", track=False, progress=False, final_split=None,
        space=SpaceConfig(w_bits=(4, 8)),
    )  # fmt: skip
    a = run_search(digits_cnn_task, cfg)
    b = run_search(digits_cnn_task, cfg, device="cpu")
    cols = ["plan_key", "accuracy", "weight_bytes", "size_bytes", "bops"]
    pd.testing.assert_frame_equal(a.trials[cols], b.trials[cols])
    assert a.fp32_accuracy == b.fp32_accuracy and b.real_evaluations == 2


def test_search_worker_payload_puts_the_model_on_the_parents_device(digits_cnn_task, tmp_path):
    from workbench.search.workers import _read_payload

    path = tmp_path / "payload.pt"
    torch.save({"task": digits_cnn_task, "device": "cpu", "study": "s"}, path)
    payload = _read_payload(str(path))
    model = payload["task"].model
    assert payload["study"] == "s" and model_device(model) == torch.device("cpu")
    for (k, v), w in zip(
        model.state_dict().items(), digits_cnn_task.model.state_dict().values(), strict=True
    ):
        assert torch.equal(v, w), k
    torch.save({"task": digits_cnn_task}, path)  # a payload without a device: the model stays on the CPU
    assert model_device(_read_payload(str(path))["task"].model) == torch.device("cpu")
    torch.save({"task": digits_cnn_task, "device": BAD}, path)
    with _bad_device():
        _read_payload(str(path))


def test_evaluate_plan_on_cpu_equals_evaluate_plan_without_device(digits_cnn_task):
    from workbench.pipeline import evaluate_plan

    plan = QuantPlan.from_shorthand("uniform:w4a8:per_channel", digits_cnn_task.model)
    a = evaluate_plan(digits_cnn_task, plan, split="val")
    b = evaluate_plan(digits_cnn_task, plan, split="val", device="cpu", keep_model=True)
    assert a.to_dict() == b.to_dict() and model_device(b.model) == torch.device("cpu")


def test_pipeline_on_cpu_equals_pipeline_without_device():
    from workbench.pipeline import PipelineConfig, run_pipeline

    kw = dict(model="digits_cnn", plans=(("INT8", "uniform:w8a8:per_channel"),), profile_batches=1,
              split="val", progress=False, track=False, search_bits=(4.0,), search_evaluations=3)  # fmt: skip
    a = run_pipeline(PipelineConfig(**kw))
    b = run_pipeline(PipelineConfig(**kw, device="cpu"))
    pd.testing.assert_frame_equal(a.table, b.table)
    assert PipelineConfig(device=torch.device("cpu")).device == "cpu"
    with pytest.raises(DeviceError, match="'gpu' not understood"):
        PipelineConfig(device="gpu")
    with _bad_device():
        PipelineConfig(device=BAD)


def test_runtime_on_cpu_equals_runtime_without_device(digits_cnn_task):
    from workbench.runtime import RuntimeConfig, evaluate_runtime

    kw = dict(budgets=(0.75,), policies=("static", "rule"), shifts=("clean", "noise"), oracle=False,
              split="val", config=RuntimeConfig(w_bits=(4, 8), probe_samples=16))  # fmt: skip
    a = evaluate_runtime(digits_cnn_task, **kw)
    b = evaluate_runtime(digits_cnn_task, **kw, device="cpu")
    cols = [c for c in a.table.columns if c != "overhead_fraction"]  # a timing
    pd.testing.assert_frame_equal(a.table[cols], b.table[cols])
    pd.testing.assert_frame_equal(a.static_maps, b.static_maps)


def test_deploy_on_cpu_equals_deploy_without_device(digits_cnn_task):
    from workbench.hardware.deploy import DeployConfig, deploy, measure_deployment

    task = digits_cnn_task
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", task.model)
    x = task.example_input(16)
    a = deploy(task.model, plan, task.calib_loader)
    b = deploy(task.model, plan, task.calib_loader, device="cpu")
    assert a.precision_counts() == b.precision_counts() == {"int8": 4}
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    res = measure_deployment(
        task.model, plan, task.calib_loader, example_input=x, device="cpu",
        config=DeployConfig(batch_size=8, repeats=1, warmup=0, threads=1),
    )  # fmt: skip
    assert res.device == "cpu" and res.to_dict()["device"] == "cpu" and res.precision_counts == {"int8": 4}


# --------------------------------------------------------------------------------------------- early errors


def test_every_stage_refuses_a_missing_device_before_any_work(digits_cnn_task, monkeypatch, tmp_path):
    from workbench import pipeline, predictor, runtime, sensitivity
    from workbench.hardware import deploy as deploy_mod
    from workbench.hardware.deploy import convert as deploy_convert
    from workbench.predictor import dataset as predictor_dataset  # where build_plan_dataset looks them up
    from workbench.qat import train_qat
    from workbench.runtime import factory as runtime_factory
    from workbench.search import study
    from workbench.sensitivity import analyze as sensitivity_analyze

    task = digits_cnn_task
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", task.model)
    for module, name in (
        (sensitivity_analyze, "_take"), (sensitivity_analyze, "_compute"),
        (predictor_dataset, "layer_costs"), (predictor_dataset, "_reference"),
        (study, "default_storage"), (study, "open_storage"), (pipeline, "quantize_model"),
        (pipeline, "make_task"), (runtime_factory, "_inputs"), (runtime_factory, "SwitchableModel"),
        (deploy_convert, "load_profile"), (deploy_convert, "_baked_float_model"),
    ):  # fmt: skip
        monkeypatch.setattr(module, name, _boom)
    with _bad_device():
        sensitivity.analyze_sensitivity(task, cache=False, device=BAD)
    with _bad_device():
        predictor.build_plan_dataset(task, path=tmp_path / "d.jsonl", progress=False, device=BAD)
    with _bad_device():
        study.run_search(task, study.SearchConfig(storage=":memory:", track=False), device=BAD)
    with _bad_device():
        pipeline.evaluate_plan(task, plan, device=BAD)
    config = pipeline.PipelineConfig(model="digits_cnn", track=False)
    object.__setattr__(config, "device", BAD)  # a config built on a machine that has the device
    with _bad_device():
        pipeline.run_pipeline(config)
    with _bad_device():
        runtime.evaluate_runtime(task, device=BAD)
    with _bad_device():
        deploy_mod.deploy(task.model, plan, task.calib_loader, device=BAD)
    with _bad_device():
        deploy_mod.measure_deployment(
            task.model, plan, task.calib_loader, example_input=task.example_input(), device=BAD
        )
    with _bad_device():
        train_qat(task, plan, track=False, progress=False, device=BAD)
    assert not (tmp_path / "d.jsonl").exists()


def test_int8_deployment_off_the_cpu_is_refused_before_conversion(digits_cnn_task, monkeypatch):
    from workbench.hardware import deploy as deploy_mod
    from workbench.hardware.deploy import convert as deploy_convert
    from workbench.hardware.dispatch import dispatch_plan
    from workbench.hardware.profile import load_profile

    task = digits_cnn_task
    int8 = QuantPlan.from_shorthand("uniform:w8a8:per_channel", task.model)
    bf16 = QuantPlan({n: QuantSpec(w_bits=16, a_bits=16) for n in ("conv1", "conv2", "fc1", "fc2")})
    prof = load_profile(deploy_mod.DEFAULT_PROFILE)
    run = deploy_mod.EXECUTABLE
    cuda = torch.device("cuda", 0)
    with pytest.raises(DeviceError, match=r"cannot deploy on cuda:0: int8 deployment is CPU-only.*conv1"):
        deploy_mod._check_device(cuda, dispatch_plan(task.model, int8, prof, executable=run))
    deploy_mod._check_device(cuda, dispatch_plan(task.model, bf16, prof, executable=run))  # may leave the CPU
    deploy_mod._check_device(torch.device("cpu"), dispatch_plan(task.model, int8, prof, executable=run))
    # through deploy(): the device resolves (as on a CUDA machine), then the int8 plan is refused unconverted
    monkeypatch.setattr(deploy_convert, "resolve_device", lambda d: cuda)
    monkeypatch.setattr(deploy_convert, "_baked_float_model", _boom)
    with pytest.raises(DeviceError, match="int8 deployment is CPU-only"):
        deploy_mod.deploy(task.model, int8, task.calib_loader, device="cuda")


def test_cli_with_a_missing_device_exits_2_naming_it(tmp_path):
    cmd = [sys.executable, "-m", "workbench", "quantize", "--model", "digits_cnn",
           "--plan", "uniform:w8a8:per_channel", "--device", BAD, "--no-track"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert f"error: device {BAD!r}" in proc.stderr and "['cpu'" in proc.stderr
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- on CUDA


@needs_cuda
def test_cuda_stages_agree_with_the_cpu(digits_cnn_task, tmp_path):
    from workbench.pipeline import evaluate_plan
    from workbench.quant import load_packed, quantize_model

    task = digits_cnn_task
    plan = QuantPlan.from_shorthand("uniform:w4a8:per_channel", task.model)
    cpu = evaluate_plan(task, plan, split="val")
    gpu = evaluate_plan(
        task, plan, split="val", device="cuda", keep_model=True, packed_path=tmp_path / "m.wbq"
    )
    assert model_device(gpu.model).type == "cuda" and model_device(task.model).type == "cpu"
    assert abs(gpu.accuracy - cpu.accuracy) <= 0.01 and gpu.packed_bytes == cpu.packed_bytes
    back = load_packed(tmp_path / "m.wbq", task.to("cuda").model)  # CPU file values into a CUDA model
    x = task.example_input(32).cuda()
    with torch.no_grad():
        torch.testing.assert_close(back(x), gpu.model(x), rtol=1e-4, atol=1e-4)
    pruned = QuantPlan(
        {n: QuantSpec(w_bits=4, sparsity=0.5, sparsity_structure="channel") for n in ("conv2",)}
    )
    qmodel = quantize_model(task.to("cuda").model, pruned, task.calib_loader)
    evaluate_plan(
        task, pruned, split="val", device="cuda", packed_path=tmp_path / "p.wbq"
    )  # kept rows on CUDA
    assert model_device(qmodel).type == "cuda"


@needs_cuda
def test_cuda_sensitivity_runtime_and_deploy(digits_cnn_task, monkeypatch):
    from workbench.hardware.deploy import deploy, measure_deployment
    from workbench.runtime import RuntimeConfig, evaluate_runtime
    from workbench.sensitivity import SensitivityConfig, analyze_sensitivity

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # full float32, as on the CPU
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    task = digits_cnn_task
    cfg = SensitivityConfig(w_bits=(4,), a_bits=(8,), metrics=("output_mse", "hessian", "fisher"), calib_batches=1,
                            hutchinson_max_iter=4, hutchinson_min_iter=4, progress=False)  # fmt: skip
    a = analyze_sensitivity(task, cfg, cache=False)
    b = analyze_sensitivity(task, cfg, cache=False, device="cuda")
    assert b.info["device"].startswith("cuda")
    # the same probes and Hutchinson vectors; float rounding differs (a rounding flip moves a probe a little)
    pd.testing.assert_series_equal(a.table["value"], b.table["value"], rtol=0.05, atol=1e-6)
    ev = evaluate_runtime(task, budgets=(0.75,), policies=("rule",), shifts=("noise",), oracle=False,
                          split="val", config=RuntimeConfig(w_bits=(4, 8), probe_samples=16), device="cuda")  # fmt: skip
    assert ev.table["accuracy"].notna().all()
    int8 = QuantPlan.from_shorthand("uniform:w8a8:per_channel", task.model)
    with pytest.raises(DeviceError, match="int8 deployment is CPU-only"):
        deploy(task.to("cuda").model, int8, task.calib_loader)
    bf16 = QuantPlan({n: QuantSpec(w_bits=16, a_bits=16) for n in ("conv1", "conv2", "fc1", "fc2")})
    res = measure_deployment(task.model, bf16, task.calib_loader, example_input=task.example_input(32),
                             evaluate=task.evaluate, device="cuda")  # fmt: skip
    assert res.device.startswith("cuda") and res.accuracy >= res.fp32_accuracy - 0.02
