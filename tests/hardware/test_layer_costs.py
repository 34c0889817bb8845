"""Per-layer costs in context and the estimator built on them: logic only, on fake timers and lookup tables (no
assertion depends on wall-clock time or load)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from workbench._common.signed import UntrustedFileError
from workbench.hardware.deploy import deploy
from workbench.hardware.layer_costs import (
    KERNELS,
    LayerCostConfig,
    LayerCostError,
    LayerCosts,
    deployed_kernels,
    estimate_breakdown,
    estimate_latency,
    kernel_of_module,
    layer_links,
    measure_layer_costs,
)
from workbench.hardware.timing import LatencyStats, time_modules_in_model
from workbench.quant import QuantPlan, QuantSpec
from workbench.quant.swap import get_module

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# one engine on every CPU: under x86 / fbgemm an int8 Linear feeding only float ops has a float32 output (no
# dequantize to measure), under qnnpack it is requantized; the fake timings below are qnnpack's
ENGINE = "qnnpack"

FAKE_MS = {"fp32": 1.0, "bf16": 2.0, "int8_static": 0.5, "int8_weight_only": 0.7, "int4_weight_only": 0.6,
           "fallback": 3.0, "quantize": 0.1, "dequantize": 0.2}  # fmt: skip
MODEL_MS = 10.0
# each probe's model = its layers + conversions + the FP32 rest (10 - 5 FP32 layers): no context cost
PROBE_MS = {"fp32": MODEL_MS, "bf16": 5 * 2.0 + 5, "int8_static": 5 * 0.5 + 2 * 0.1 + 3 * 0.2 + 5,
            "int8_weight_only": 3 * 1.0 + 2 * 0.7 + 5, "int4_weight_only": 3 * 1.0 + 2 * 0.6 + 5,
            "fallback": 5 * 3.0 + 5}  # fmt: skip


class Residual(nn.Module):
    """conv-bn-relu, a second conv and a shortcut conv both reading its output, a residual add, two Linears."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.short = nn.Conv2d(8, 8, 1)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(128, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(self.conv2(h) + self.short(h))
        return self.fc2(self.relu(self.fc1(self.flatten(h))))


class FakeTimer:
    """Stands in for time_side_by_side: runs each callable once (they must work) and answers from FAKE_MS."""

    def __init__(self, extra_ms: dict[str, float] | None = None) -> None:
        self.calls: list[dict] = []
        self.probe_ms = {k: v + (extra_ms or {}).get(k, 0.0) for k, v in PROBE_MS.items()}

    def __call__(self, fns, x, *, repeats, warmup, threads):
        self.calls.append({"keys": sorted(fns), "repeats": repeats, "warmup": warmup, "threads": threads})
        with torch.inference_mode():
            for fn in fns.values():
                fn(x)
        ms = {k: (self.probe_ms if k.startswith("model|") else FAKE_MS)[k.rsplit("|", 1)[1]] for k in fns}
        return {k: LatencyStats.from_times([v / 1000.0]) for k, v in ms.items()}


def _refuse(*args, **kwargs):
    raise AssertionError("the cache should have answered")


def fake_module_timer(run, modules, *, repeats, warmup, threads):
    """Stands in for time_modules_in_model: runs the model once and answers FAKE_MS by each module's kernel."""
    with torch.inference_mode():
        run()
    return {n: FAKE_MS[kernel_of_module(m)] for n, m in modules.items()}


def measure(model, batch, *, timer, **kwargs):
    """measure_layer_costs with the fake in-model timer (refusing too when ``timer`` refuses)."""
    module_timer = _refuse if timer is _refuse else fake_module_timer
    return measure_layer_costs(model, batch, timer=timer, module_timer=module_timer, **kwargs)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    m = Residual().eval()
    m.bn1.running_mean.uniform_(-0.2, 0.2)
    return m


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def costs(model, batch) -> LayerCosts:
    return measure(model, batch, config=LayerCostConfig(use_cache=False, engine=ENGINE), timer=FakeTimer())


LAYERS = ("conv1", "conv2", "short", "fc1", "fc2")
W8A8, BF16 = QuantSpec(w_bits=8, a_bits=8), QuantSpec(w_bits=16, a_bits=16)
PLANS = {
    "fp32": {},
    "int8": dict.fromkeys(LAYERS, W8A8),
    "bf16": dict.fromkeys(LAYERS, BF16),
    "fp16 spec (deployed in bf16)": dict.fromkeys(
        LAYERS, QuantSpec(w_bits=16, a_bits=16, float16_format="float16")
    ),
    "weight-only int8 / int4": {"fc1": QuantSpec(w_bits=4, a_bits=32), "fc2": QuantSpec(w_bits=8, a_bits=32)},
    "weight-only on a conv (fallback)": {"conv2": QuantSpec(w_bits=8, a_bits=32)},
    "per-group int8 (fallback)": {
        "fc1": QuantSpec(w_bits=8, a_bits=8, granularity="per_group", group_size=32)
    },
    "dynamic int8 (static path: fallback)": {"fc2": QuantSpec(w_bits=8, a_bits=8, a_dynamic=True)},
    "mixed": {"conv1": W8A8, "conv2": BF16, "fc1": QuantSpec(w_bits=4, a_bits=32), "fc2": W8A8},
}


@pytest.mark.parametrize("plan_name", list(PLANS))
def test_kernel_choice_equals_deployments(model, batch, plan_name):
    plan = QuantPlan(PLANS[plan_name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deployed = deploy(model, plan, batch)
    built = {n: kernel_of_module(get_module(deployed.module, n)) for n in LAYERS}
    assert deployed_kernels(model, plan) == built


def test_fallbacks_and_weight_only_are_what_the_tests_think(model):
    kernels = deployed_kernels(
        model, QuantPlan({**PLANS["weight-only int8 / int4"], **PLANS["per-group int8 (fallback)"]})
    )
    assert kernels["fc2"] == "int8_weight_only" and kernels["fc1"] == "fallback"
    assert deployed_kernels(model, QuantPlan(PLANS["fp16 spec (deployed in bf16)"]))["conv1"] == "bf16"


def test_links_follow_the_graph(model):
    sources, sinks = layer_links(model, list(LAYERS))
    assert sources == {"conv1": "@x", "conv2": "conv1", "short": "conv1", "fc1": "@add", "fc2": "fc1"}
    assert (
        sinks["conv1"] == ("conv2", "short") and sinks["conv2"] == ("@add",) and sinks["fc2"] == ("@output",)
    )


def test_measured_table_and_rest_of_model(costs):
    for name in ("conv1", "conv2", "short"):
        assert set(costs.kernel_ms[name]) == {"fp32", "bf16", "int8_static", "fallback"}
    linear = {"fp32", "bf16", "int8_static", "int8_weight_only", "int4_weight_only", "fallback"}
    assert set(costs.kernel_ms["fc1"]) == linear
    assert set(costs.quantize_ms) == set(LAYERS) and costs.dequantize_ms["conv2"] == FAKE_MS["dequantize"]
    assert costs.rest_ms == pytest.approx(MODEL_MS - 5 * FAKE_MS["fp32"])
    assert estimate_latency(costs, QuantPlan({})) == pytest.approx(MODEL_MS)
    assert len(costs.table()) == 3 * 4 + 2 * 6
    assert costs.context_ms == pytest.approx(dict.fromkeys(PROBE_MS.keys() - {"fp32"}, 0.0))


def test_context_cost_shared_over_the_probes_layers_by_their_size(model, batch):
    timer = FakeTimer({"int8_static": 1.0, "int4_weight_only": -0.4})
    costs = measure(model, batch, config=LayerCostConfig(use_cache=False, engine=ENGINE), timer=timer)
    # shared by the elements of each layer's input and output (batch 4 of 1x4x4 images)
    size = {"conv1": 64 + 512, "conv2": 512 + 512, "short": 512 + 512, "fc1": 512 + 128, "fc2": 128 + 40}
    assert costs.activation == size
    assert costs.context_ms["int8_static"] == pytest.approx(1.0 / sum(size.values()))
    assert costs.context_ms["int4_weight_only"] == pytest.approx(-0.4 / (size["fc1"] + size["fc2"]))
    assert estimate_latency(costs, QuantPlan(PLANS["int8"])) == pytest.approx(PROBE_MS["int8_static"] + 1.0)
    df = estimate_breakdown(costs, QuantPlan({"fc1": W8A8})).set_index("layer")
    assert df.loc["fc1", "context_ms"] == pytest.approx(1.0 * 640 / 3432)
    assert (df.drop("fc1")["context_ms"] == 0).all()


def test_timer_gets_the_config(model, batch):
    timer = FakeTimer()
    cfg = LayerCostConfig(
        repeats=3,
        warmup=1,
        threads=1,
        kernels=("fp32", "int8_static"),
        use_cache=False,
        engine=ENGINE,
        layer_timing="isolated",
    )
    measure(model, batch, config=cfg, timer=timer)
    models, layers = timer.calls  # whole deployments timed among themselves, then layers and conversions
    for call in (models, layers):
        assert (call["repeats"], call["warmup"], call["threads"]) == (3, 1, 1)
    assert models["keys"] == ["model|fp32", "model|int8_static"]
    assert "conv1|int8_static" in layers["keys"] and not any(
        "bf16" in k or "model" in k for k in layers["keys"]
    )


def test_in_model_timing_times_each_probes_layers_inside_its_passes(model, batch):
    timer, seen = FakeTimer(), []

    def module_timer(run, modules, *, repeats, warmup, threads):
        seen.append(
            (sorted(modules), {kernel_of_module(m) for m in modules.values()}, repeats, warmup, threads)
        )
        return fake_module_timer(run, modules, repeats=repeats, warmup=warmup, threads=threads)

    cfg = LayerCostConfig(repeats=3, warmup=1, threads=1, kernels=("fp32", "int8_static"), use_cache=False,
                          engine=ENGINE)  # fmt: skip
    costs = measure_layer_costs(model, batch, config=cfg, timer=timer, module_timer=module_timer)
    assert seen == [(sorted(LAYERS), {k}, 3, 1, 1) for k in ("fp32", "int8_static")]
    isolated = timer.calls[1]["keys"]  # only the conversions are timed on their own
    assert isolated and all(k.endswith(("|quantize", "|dequantize")) for k in isolated)
    assert costs.kernel_ms["conv1"] == {"fp32": FAKE_MS["fp32"], "int8_static": FAKE_MS["int8_static"]}


def test_modules_timed_inside_whole_passes_with_a_fake_clock():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    ticks = iter(range(10_000))
    got = time_modules_in_model(lambda: net(torch.ones(1, 4)), {"0": net[0], "2": net[2]}, repeats=3, warmup=1,
                                clock=lambda: next(ticks) / 1000.0)  # fmt: skip
    assert got == pytest.approx(
        {"0": 1.0, "2": 1.0}
    )  # each call spans one tick between its pre- and post-hook: 1 ms
    assert not net[0]._forward_hooks and not net[0]._forward_pre_hooks  # hooks removed
    with pytest.raises(LayerCostError, match="layer_timing"):
        LayerCostConfig(layer_timing="fast")


def _conversions(costs: LayerCosts, plan: dict) -> tuple[dict, dict]:
    df = estimate_breakdown(costs, QuantPlan(plan)).set_index("layer")
    return df["quantize_ms"][df["quantize_ms"] > 0].to_dict(), df["dequantize_ms"][
        df["dequantize_ms"] > 0
    ].to_dict()


def test_conversions_only_at_int8_boundaries(costs):
    q, dq = FAKE_MS["quantize"], FAKE_MS["dequantize"]
    assert _conversions(costs, PLANS["fp32"]) == ({}, {})
    assert _conversions(costs, PLANS["bf16"]) == ({}, {})
    # fc1 reads the float add; conv2 and short feed it, fc2 the output; conv1 feeds only int8 layers
    assert _conversions(costs, PLANS["int8"]) == (
        {"conv1": q, "fc1": q},
        {"conv2": dq, "short": dq, "fc2": dq},
    )
    # conv2 and short read one float value: quantized once
    assert _conversions(costs, {"conv2": W8A8, "short": W8A8}) == ({"conv2": q}, {"conv2": dq, "short": dq})
    assert _conversions(costs, {"conv1": W8A8, "short": W8A8}) == ({"conv1": q}, {"conv1": dq, "short": dq})
    assert _conversions(costs, {"fc1": W8A8}) == ({"fc1": q}, {"fc1": dq})
    assert _conversions(costs, {"fc1": W8A8, "fc2": W8A8}) == ({"fc1": q}, {"fc2": dq})


def test_estimate_sums_the_table(costs):
    plan = QuantPlan(PLANS["mixed"])
    df = estimate_breakdown(costs, plan)
    assert list(df["kernel"]) == ["int8_static", "bf16", "fp32", "int4_weight_only", "int8_static"]
    expected = 0.5 + 2.0 + 1.0 + 0.6 + 0.5 + 0.1 + 0.2 + 0.1 + 0.2 + costs.rest_ms  # q+dq at conv1 and fc2
    assert estimate_latency(costs, plan) == pytest.approx(expected)


def test_fallback_priced_as_measured_and_unmeasured_as_fp32_with_a_note(model, batch, costs):
    df = estimate_breakdown(costs, QuantPlan(PLANS["per-group int8 (fallback)"])).set_index("layer")
    assert df.loc["fc1", "kernel"] == "fallback" and df.loc["fc1", "layer_ms"] == FAKE_MS["fallback"]
    cfg = LayerCostConfig(kernels=("fp32", "int8_static"), use_cache=False, engine=ENGINE)
    few = measure(model, batch, config=cfg, timer=FakeTimer())
    df = estimate_breakdown(few, QuantPlan(PLANS["bf16"])).set_index("layer")
    assert (df["layer_ms"] == FAKE_MS["fp32"]).all() and "bf16 not measured: priced as fp32" in df.loc[
        "fc1", "note"
    ]


def test_cache_round_trip_and_invalidation(model, batch, tmp_path):
    cfg = LayerCostConfig(cache_dir=tmp_path, threads=1, engine=ENGINE)
    first = measure(model, batch, config=cfg, timer=FakeTimer())
    (path,) = tmp_path.glob("*.json")
    again = measure(model, batch, config=cfg, timer=_refuse)
    assert again == first and again.model is model
    timer = FakeTimer()
    measure(model, batch, config=LayerCostConfig(cache_dir=tmp_path, threads=2, engine=ENGINE), timer=timer)
    measure(model, batch[:2], config=cfg, timer=timer)
    assert (
        len(timer.calls) == 2 * 2 and len(list(tmp_path.glob("*.json"))) == 3
    )  # 2 timer calls a measurement
    path.write_bytes(path.read_bytes().replace(b'"rest_ms": 5.0', b'"rest_ms": 0.0'))
    with pytest.raises(UntrustedFileError, match=path.name):
        measure(model, batch, config=cfg, timer=_refuse)


def test_changed_weights_change_the_key(model, batch, tmp_path):
    cfg = LayerCostConfig(cache_dir=tmp_path, engine=ENGINE)
    measure(model, batch, config=cfg, timer=FakeTimer())
    other = Residual().eval()
    timer = FakeTimer()
    measure(other, batch, config=cfg, timer=timer)
    assert len(timer.calls) == 2  # measured again: models, then layers


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [({"kernels": ("fp32", "int3")}, "int3"), ({"kernels": ("bf16",)}, "bf16"), ({"repeats": 0}, "0"),
     ({"threads": 0}, "0")],
)  # fmt: skip
def test_bad_config_names_value_and_choices(kwargs, bad):
    with pytest.raises(LayerCostError, match=bad) as err:
        LayerCostConfig(**kwargs)
    if "kernels" in kwargs:
        assert all(k in str(err.value) for k in KERNELS)


def test_bad_plan_and_input_rejected(costs, model):
    with pytest.raises(LayerCostError, match="nope.*conv1"):
        estimate_latency(costs, QuantPlan({"nope": W8A8}))
    with pytest.raises(LayerCostError, match="QuantPlan"):
        estimate_latency(costs, {"conv1": W8A8})
    with pytest.raises(LayerCostError, match="str"):
        measure_layer_costs(model, "not a batch", timer=_refuse)


class SamePadConv(nn.Conv2d):
    """A TF-style SAME-padding conv (as EfficientNet-Lite's): a Conv2d subclass that pads in its own forward, which
    the FP32 deployment's FX trace inlines (the module is never called there)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.pad(x, (0, 1, 0, 1)))


def test_a_layer_traced_through_in_deployment_gets_its_float_cost():
    torch.manual_seed(0)
    net = nn.Sequential(SamePadConv(1, 4, 2), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).eval()
    x = torch.randn(2, 1, 4, 4)
    fp32 = deploy(net, QuantPlan({}), [x])
    calls = []
    handle = get_module(fp32.module, "0").register_forward_hook(lambda m, i, o: calls.append(1))
    with torch.inference_mode():
        fp32(x)
    handle.remove()
    assert not calls  # traced through: the deployed FP32 model never calls the module
    got = measure(net, x, config=LayerCostConfig(use_cache=False, engine=ENGINE), timer=FakeTimer())
    assert got.kernel_ms["0"]["fp32"] == FAKE_MS["fp32"]  # timed as the float model runs it
    assert estimate_latency(got, QuantPlan({})) > 0


@pytest.mark.parametrize("engine", ["auto", "x86"])  # x86: float-output int8 Linear / 1x1 modules
def test_layers_behind_a_pre_op_and_float_output_int8_layers_are_int8_kernels(engine):
    from tests.quant.test_adapters import SameNet

    torch.manual_seed(0)
    net = SameNet().eval()
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dep = deploy(net, plan, x, engine=engine)
    layers = list(plan.layers)
    built = {n: kernel_of_module(get_module(dep.module, n)) for n in layers}
    assert built == dict.fromkeys(layers, "int8_static") == deployed_kernels(net, plan)
    if engine == "x86":
        assert "Int8FloatOutput" in {type(get_module(dep.module, n)).__name__ for n in layers}
