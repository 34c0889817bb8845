"""Per-layer costs measured in context, cached per machine, and the latency estimator built on them (issue 25).

:func:`measure_layer_costs` deploys the model once per kernel of the menu (:data:`PROBES`: a plan putting every
layer it can on that kernel) with :func:`~workbench.hardware.deploy.deploy` and times, in this order: each probe's
whole deployed model, round-robin with the others (:func:`~workbench.hardware.timing.time_side_by_side`); every
(layer, kernel) module inside whole passes of its deployment
(:func:`~workbench.hardware.timing.time_modules_in_model`; ``layer_timing="isolated"``: on its captured input, in
a loop of its own); then, from each deployed layer's
captured input and output (forward hooks: shape, batch, memory format, int8 grid), the conversions at an int8
region's edge (``quantize_per_tensor`` of the layer's float input, ``dequantize`` of its int8 output). The rest of
the model (adds, pooling) is the FP32 model's latency minus its FP32 layers (clipped at 0); what a probe's model
takes beyond its layers, conversions and that rest (non-layer ops in its domain: int8 adds dequantizing, pads,
conversions) is its kernel's ``context`` cost, shared over the layers it put on that kernel by the size of their
inputs and outputs (those ops work on them: on EfficientNet-Lite1 int8 costs most where feature maps are large).
bf16 layers cast their input and output themselves (:class:`~workbench.hardware.kernels.Bf16Layer`, as
deployed): those casts are in their cost.

:func:`estimate_breakdown` / :func:`estimate_latency` price a plan: each layer on the kernel deployment gives it
(:func:`deployed_kernels`: deploy's dispatch, exact-int8 check, :func:`~workbench.hardware.kernels.choose_kernel`
for the menu's layers and bf16 swap), a ``quantize`` where int8 layers read a value no int8 layer produced (once
per value), a ``dequantize`` where an int8 output reaches anything else (:func:`layer_links`), each layer's
share of its kernel's context cost, plus the rest.
The cache (signed JSON, ``data/layer_costs``) is keyed by CPU, threads, torch, engine, model digest, input
shapes, kernels, timing knobs and the measuring code.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

import workbench.hardware.deploy as deploy_pkg
import workbench.hardware.kernels as kernels_pkg
from workbench._common.hashing import code_fingerprint, sha256_hex
from workbench._common.signed import read_signed, write_signed
from workbench.hardware.deploy.convert import deploy, resolve_engine
from workbench.hardware.deploy.inputs import DeployInputError
from workbench.hardware.kernels import (
    layer_kind,
)
from workbench.hardware.layer_links import deployed_kernels, kernel_of_module, layer_links
from workbench.hardware.layer_probes import capture_layers, conversion_calls, engine_scope, fixed_call
from workbench.hardware.timing import LatencyStats, cpu_name, time_modules_in_model, time_side_by_side
from workbench.paths import data_dir
from workbench.quant.inputs import input_tensors
from workbench.quant.introspect import quantizable_layers
from workbench.quant.spec import QuantPlan, QuantSpec
from workbench.quant.swap import get_module

PROBES: dict[str, tuple[QuantSpec | None, tuple[str, ...]]] = {
    "fp32": (None, ("linear", "conv", "embedding")),
    "bf16": (QuantSpec(w_bits=16, a_bits=16), ("linear", "conv")),
    "int8_static": (QuantSpec(w_bits=8, a_bits=8), ("linear", "conv")),
    "int8_weight_only": (QuantSpec(w_bits=8, a_bits=32), ("linear",)),
    "int4_weight_only": (QuantSpec(w_bits=4, a_bits=32), ("linear",)),
    "packed_lookup": (QuantSpec(w_bits=8, a_bits=32), ("embedding",)),
    "fallback": (QuantSpec(w_bits=8, a_bits=8, w_symmetric=False), ("linear", "conv")),
}
"""Kernel -> (the spec of its probe plan, the layer kinds it serves): the kernels the static deployment path
runs (``int8_dynamic`` belongs to the dynamic path, :func:`~workbench.hardware.deploy.compare_kernels`);
``fallback``: a layer's fake-quant twin on float kernels (asymmetric int8 weights, which no int8 kernel takes)."""
KERNELS: tuple[str, ...] = tuple(PROBES)
LAYER_TIMINGS: tuple[str, ...] = ("in_model", "isolated")
CACHE_KIND = "layer-costs"
IN_CONTEXT = "in_context"
"""The profile name that asks a search's cost model for latencies from :func:`measure_layer_costs`."""


class LayerCostError(ValueError):
    """Bad input to the layer-cost measurement or estimator; the message names the value and the choices."""


@dataclass(frozen=True)
class LayerCostConfig:
    """Knobs of :func:`measure_layer_costs`: timed runs and warm-up, threads (None: torch's current count),
    quantized engine, the kernels measured, the per-machine cache (``cache_dir`` None: data/layer_costs), and how
    layers are timed: ``in_model`` (hooks around each layer inside whole passes of its deployment) or
    ``isolated`` (each layer called on its captured input in a loop of its own)."""

    repeats: int = 15
    warmup: int = 3
    threads: int | None = None
    engine: str = "auto"
    kernels: tuple[str, ...] = KERNELS
    use_cache: bool = True
    cache_dir: str | Path | None = None
    layer_timing: str = "in_model"

    def __post_init__(self) -> None:
        if self.layer_timing not in LAYER_TIMINGS:
            raise LayerCostError(f"layer_timing={self.layer_timing!r}: choose one of {LAYER_TIMINGS}")
        bad = [k for k in self.kernels if k not in PROBES]
        if bad or "fp32" not in self.kernels:
            raise LayerCostError(
                f"kernels={bad or list(self.kernels)!r}: choose from {KERNELS}, fp32 included"
            )
        for name, low in (("repeats", 1), ("warmup", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise LayerCostError(f"{name} must be an integer >= {low}, got {v!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or int(self.threads) < 1):
            raise LayerCostError(f"threads must be None or an integer >= 1, got {self.threads!r}")


@dataclass
class LayerCosts:
    """Measured costs (ms per batch): ``kernel_ms[layer][kernel]``, ``quantize_ms[layer]`` (its float input to
    int8), ``dequantize_ms[layer]`` (its int8 output to float), ``model_ms[kernel]`` (each probe's deployed model),
    the rest of the FP32 model, ``context_ms[kernel]`` (per element of ``activation``, a layer's input and
    output elements: see the module docstring); ``sources``
    / ``sinks``: what feeds each layer and what its output reaches (:func:`layer_links`); ``model``: the float
    model (not stored), which :func:`deployed_kernels` reads."""

    key: dict[str, Any]
    layers: tuple[str, ...]
    kernel_ms: dict[str, dict[str, float]]
    quantize_ms: dict[str, float]
    dequantize_ms: dict[str, float]
    model_ms: dict[str, float]
    rest_ms: float
    context_ms: dict[str, float]
    sources: dict[str, str]
    sinks: dict[str, tuple[str, ...]]
    activation: dict[str, float] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, compare=False, repr=False)

    def weight(self, layer: str) -> float:
        """The layer's weight in its kernel's context cost: the elements of its input and output (FP32
        deployment), 1 where not measured."""
        return float(self.activation.get(layer, 1.0))

    def table(self) -> pd.DataFrame:
        """One row per measured (layer, kernel): ``ms``."""
        rows = [
            {"layer": n, "kernel": k, "ms": ms} for n in self.layers for k, ms in self.kernel_ms[n].items()
        ]
        return pd.DataFrame(rows, columns=["layer", "kernel", "ms"])

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "model"}
        return {**out, "layers": list(self.layers), "sinks": {k: list(v) for k, v in self.sinks.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any], model: nn.Module | None = None) -> LayerCosts:
        sinks = {k: tuple(v) for k, v in data["sinks"].items()}
        fields = {
            k: data[k]
            for k in cls.__dataclass_fields__
            if k not in ("model", "layers", "sinks") and k in data
        }
        return cls(**fields, layers=tuple(data["layers"]), sinks=sinks, model=model)


# ============================================================================================ the estimator


def estimate_breakdown(costs: LayerCosts, plan: QuantPlan) -> pd.DataFrame:
    """One row per layer: the kernel deployment gives it, its ``layer_ms``, ``quantize_ms`` / ``dequantize_ms``
    at an int8 region's edges, its share of the kernel's ``context_ms``, ``total_ms`` and a note (a kernel priced at FP32 cost when it was not measured).
    ``attrs``: ``rest_ms`` (the rest of the model) and ``latency_ms`` (the estimate)."""
    if not isinstance(plan, QuantPlan):
        raise LayerCostError(f"plan must be a QuantPlan, got {type(plan).__name__}")
    if costs.model is None:
        raise LayerCostError("costs carry no model: measure them, or load them with their model")
    unknown = sorted(set(plan.layers) - set(costs.layers))
    if unknown:
        raise LayerCostError(f"plan names layer(s) {unknown} the costs lack; layers: {list(costs.layers)}")
    plan.validate(costs.model)
    kernels = deployed_kernels(costs.model, plan)
    rows, quantized = [], set()
    for name in costs.layers:
        kernel, note = kernels[name], ""
        ms = costs.kernel_ms[name].get(kernel)
        if ms is None:
            ms, note = costs.kernel_ms[name]["fp32"], f"{kernel} not measured: priced as fp32"
        q = dq = 0.0
        context = costs.context_ms.get(kernel, 0.0) * costs.weight(name)
        if kernel == "int8_static":
            src = costs.sources[name]
            if kernels.get(src) != "int8_static" and src not in quantized:
                quantized.add(src)
                q = costs.quantize_ms.get(name, 0.0)
            if any(kernels.get(s) != "int8_static" for s in costs.sinks[name]):
                dq = costs.dequantize_ms.get(name, 0.0)
        rows.append({"layer": name, "kernel": kernel, "layer_ms": ms, "quantize_ms": q, "dequantize_ms": dq,
                     "context_ms": context, "total_ms": ms + q + dq + context, "note": note})  # fmt: skip
    df = pd.DataFrame(rows)
    df.attrs.update(rest_ms=costs.rest_ms, latency_ms=max(0.0, float(df["total_ms"].sum()) + costs.rest_ms))
    return df


def estimate_latency(costs: LayerCosts, plan: QuantPlan) -> float:
    """Estimated latency (ms per batch of the measured size) of ``plan`` deployed: see
    :func:`estimate_breakdown`."""
    return float(estimate_breakdown(costs, plan).attrs["latency_ms"])


# ============================================================================================ measurement

Timer = Callable[..., dict[str, LatencyStats]]
ModuleTimer = Callable[..., dict[str, float]]


def measure_layer_costs(
    model: nn.Module,
    example: Any,
    *,
    config: LayerCostConfig | None = None,
    calib: Any | None = None,
    timer: Timer = time_side_by_side,
    module_timer: ModuleTimer = time_modules_in_model,
) -> LayerCosts:
    """Per-layer costs of ``model`` in context on ``example`` (one batch, of the size the estimates are for),
    from the per-machine cache when its key matches (see the module docstring). ``calib``: calibration data of
    the int8 probe (None: ``example``); ``timer``: :func:`~workbench.hardware.timing.time_side_by_side` and
    ``module_timer``: :func:`~workbench.hardware.timing.time_modules_in_model` (``layer_timing="in_model"``), or
    stand-ins of their signatures (tests). Never modifies ``model``."""
    cfg = config or LayerCostConfig()
    if not isinstance(model, nn.Module):
        raise LayerCostError(f"model must be an nn.Module, got {type(model).__name__}")
    if not input_tensors(example):
        raise LayerCostError(
            f"example must be a tensor or a structure of tensors, got {type(example).__name__}"
        )
    key = cost_key(model, example, cfg)
    path = _cache_path(cfg, key)
    if cfg.use_cache and path.is_file():
        data = json.loads(read_signed(path, kind=CACHE_KIND, what="layer-cost cache") or b"null")
        if isinstance(data, dict) and data.get("key") == key:
            return LayerCosts.from_dict(data, model)
    costs = _measure(model, example, cfg, key, calib if calib is not None else example, timer, module_timer)
    if cfg.use_cache:
        write_signed(path, json.dumps(costs.to_dict(), sort_keys=True).encode(), kind=CACHE_KIND)
    return costs


def cost_key(model: nn.Module, example: Any, cfg: LayerCostConfig) -> dict[str, Any]:
    """What measured costs depend on: CPU, threads, torch, engine, model digest, input shapes, kernels, timing
    knobs and the code that measures and deploys."""
    parts = [type(model).__name__]
    for k, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        parts += [f"{k}:{tuple(t.shape)}:{t.dtype}", t.reshape(-1).view(torch.uint8).numpy().tobytes()]
    return {
        "cpu": cpu_name(),
        "threads": int(cfg.threads or torch.get_num_threads()),
        "torch": torch.__version__,
        "engine": resolve_engine(cfg.engine),
        "model": sha256_hex(*parts),
        "input": [[n, list(t.shape), str(t.dtype)] for n, t in input_tensors(example)],
        "kernels": sorted(cfg.kernels),
        "repeats": cfg.repeats,
        "warmup": cfg.warmup,
        "layer_timing": cfg.layer_timing,
        "code": code_fingerprint(
            CACHE_KIND,
            kernels_pkg,
            deploy_pkg,
            Path(__file__),
            Path(__file__).with_name("layer_links.py"),
            Path(__file__).with_name("layer_probes.py"),
        )[:16],
    }


def _cache_path(cfg: LayerCostConfig, key: dict[str, Any]) -> Path:
    folder = Path(cfg.cache_dir) if cfg.cache_dir is not None else data_dir() / "layer_costs"
    return folder / f"{sha256_hex(json.dumps(key, sort_keys=True))[:20]}.json"


def _probe_plan(model: nn.Module, layers: list[str], kernel: str) -> QuantPlan:
    (spec, kinds), modules = PROBES[kernel], dict(model.named_modules())
    return QuantPlan({n: spec for n in layers if spec is not None and layer_kind(modules[n]) in kinds})


def _measure(
    model: nn.Module,
    example: Any,
    cfg: LayerCostConfig,
    key: dict[str, Any],
    calib: Any,
    timer: Timer,
    module_timer: ModuleTimer,
) -> LayerCosts:
    layers = quantizable_layers(model)
    deps = _probe_deployments(model, layers, cfg, key, calib)
    # whole deployments first, round-robin among themselves as plans are timed, before any layer's input and
    # output are held (with layer calls interleaved or captures held, Lite1 models timed 20-75 % slow)
    models = {f"model|{k}": fixed_call(d, example) for k, d in deps.items()}
    with engine_scope(key["engine"]):
        stats = timer(models, example, repeats=cfg.repeats, warmup=cfg.warmup, threads=key["threads"])
    in_model: dict[str, float] = {}
    if cfg.layer_timing == "in_model":  # each layer timed inside its deployment's whole passes
        with engine_scope(key["engine"]):
            for kernel, dep in deps.items():
                mods = _own_modules(dep.module, layers, kernel)
                got = module_timer(fixed_call(dep, example), mods, repeats=cfg.repeats, warmup=cfg.warmup,
                                   threads=key["threads"])  # fmt: skip
                in_model |= {f"{n}|{kernel}": ms for n, ms in got.items()}
    captured = _capture_probes(model, example, layers, deps)
    own = {k: {n: v for n, v in seen.items() if kernel_of_module(v[0]) == k} for k, seen in captured.items()}
    fns = {}
    for kernel, seen in own.items():
        for name, (mod, x, _) in seen.items():
            if f"{name}|{kernel}" not in in_model:  # isolated: on its captured input, in a loop of its own
                fns[f"{name}|{kernel}"] = fixed_call(mod, x)
    fns.update(conversion_calls(captured))
    with engine_scope(key["engine"]):
        stats |= timer(fns, example, repeats=cfg.repeats, warmup=cfg.warmup, threads=key["threads"])
    ms = {k: s.median_ms for k, s in stats.items()} | in_model
    activation = {n: float(_elements(x) + _elements(out)) for n, (_, x, out) in captured["fp32"].items()}
    return _assemble(model, layers, key, ms, cfg.kernels, activation)


def _own_modules(module: nn.Module, layers: list[str], kernel: str) -> dict[str, nn.Module]:
    """The layers' modules in a deployment that run on ``kernel`` (fused-away layers have none)."""
    out = {}
    for name in layers:
        try:
            mod = get_module(module, name)
        except AttributeError:
            continue
        if kernel_of_module(mod) == kernel:
            out[name] = mod
    return out


def _elements(value: Any) -> int:
    return (
        sum(t.numel() for _, t in input_tensors(value))
        if not isinstance(value, torch.Tensor)
        else value.numel()
    )


def _probe_deployments(
    model: nn.Module, layers: list[str], cfg: LayerCostConfig, key: dict[str, Any], calib: Any
) -> dict[str, Any]:
    """Each kernel's probe deployment (a kernel with no layer to take, or an int8 probe on token ids, has none)."""
    deps = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kernel in cfg.kernels:
            plan = _probe_plan(model, layers, kernel)
            if kernel != "fp32" and not len(plan):
                continue
            try:
                deps[kernel] = deploy(model, plan, calib, engine=key["engine"])
            except DeployInputError:  # int8 probe on integer inputs (token ids): deploy refuses such plans
                continue
    return deps


def _capture_probes(
    model: nn.Module, example: Any, layers: list[str], deps: dict[str, Any]
) -> dict[str, dict[str, tuple[nn.Module, Any, Any]]]:
    """What each layer's module in each probe deployment took and gave on ``example``."""
    captured = {}
    for kernel, dep in deps.items():
        with engine_scope(dep.engine):
            captured[kernel] = capture_layers(dep.module, lambda d=dep: d(example), layers)
    missing = [n for n in layers if n not in captured.get("fp32", {})]
    if (
        missing
    ):  # traced through by FX (e.g. a SAME-padding conv): the float model's own layer, as FP32 runs it
        float_model = copy.deepcopy(model).eval()
        captured["fp32"] |= capture_layers(float_model, lambda: float_model(example), missing)
    return captured


def _assemble(
    model: nn.Module,
    layers: list[str],
    key: dict[str, Any],
    ms: dict[str, float],
    kernels: tuple[str, ...],
    activation: dict[str, float],
) -> LayerCosts:
    """:class:`LayerCosts` from the median times ``ms`` keyed ``layer|kernel`` / ``layer|quantize`` /
    ``model|kernel`` ..., with each probe's context cost (its model beyond what its layers explain)."""
    table: dict[str, dict[str, float]] = {n: {} for n in layers}
    parts: dict[str, dict[str, float]] = {"quantize": {}, "dequantize": {}}
    models = {}
    for k, v in ms.items():
        name, what = k.rsplit("|", 1)
        if name == "model":
            models[what] = v
        elif what in parts:
            parts[what][name] = v
        else:
            table[name][what] = v
    missing = [n for n in layers if "fp32" not in table[n]]
    if missing:
        raise LayerCostError(f"no FP32 cost measured for layer(s) {missing} (fused away in deployment?)")
    rest = max(0.0, models["fp32"] - sum(table[n]["fp32"] for n in layers))
    sources, sinks = layer_links(model, layers)
    costs = LayerCosts(key, tuple(layers), table, parts["quantize"], parts["dequantize"], models, rest, {},
                       sources, sinks, activation, model=model)  # fmt: skip
    for kernel in (k for k in kernels if k in models and k != "fp32"):
        df = estimate_breakdown(costs, _probe_plan(model, layers, kernel))
        weight = sum(costs.weight(n) for n in df["layer"][df["kernel"] == kernel])
        if weight:  # what the layers do not explain (conversions, adds, pads on their values) by their size
            costs.context_ms[kernel] = (models[kernel] - df.attrs["latency_ms"]) / weight
    return costs
