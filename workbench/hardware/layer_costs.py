"""Per-layer costs measured in context, cached per machine, and the latency estimator built on them (issue 25).

:func:`measure_layer_costs` deploys the model once per kernel of the menu (:data:`PROBES`: a plan putting every
layer it can on that kernel) with :func:`~workbench.hardware.deploy.deploy`, captures each deployed layer's real
input and output on the example batch (forward hooks: shape, batch, memory format, int8 grid) and times, in one
interleaved :func:`~workbench.hardware.timing.time_side_by_side` run, every (layer, kernel) module on its input,
the conversions at an int8 region's edge (``quantize_per_tensor`` of the layer's float input, ``dequantize`` of
its int8 output) and each probe's whole deployed model. The rest of the model (adds, pooling) is the FP32
model's latency minus its FP32 layers (clipped at 0); what a probe's model takes beyond its layers, conversions
and that rest (non-layer ops in its domain, e.g. int8 adds dequantizing) is its kernel's ``context`` cost, shared
over the layers it put on that kernel. bf16 layers cast their input and output themselves
(:class:`~workbench.hardware.kernels.Bf16Layer`, as deployed): those casts are in their cost.

:func:`estimate_breakdown` / :func:`estimate_latency` price a plan: each layer on the kernel deployment gives it
(:func:`deployed_kernels`: deploy's dispatch, exact-int8 check, :func:`~workbench.hardware.kernels.choose_kernel`
for the menu's layers and bf16 swap), a ``quantize`` where int8 layers read a value no int8 layer produced (once
per value), a ``dequantize`` where an int8 output reaches anything else (:func:`layer_links`), each layer's
share of its kernel's context cost, plus the rest.
The cache (signed JSON, ``data/layer_costs``) is keyed by CPU, threads, torch, engine, model digest, input
shapes, kernels, timing knobs and the measuring code.
"""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from collections.abc import Callable, Iterator
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
from workbench.hardware.deploy.convert import (
    deploy,
    resolve_engine,
)
from workbench.hardware.deploy.inputs import DeployInputError
from workbench.hardware.kernels import (
    layer_kind,
)
from workbench.hardware.layer_links import deployed_kernels, kernel_of_module, layer_links
from workbench.hardware.timing import LatencyStats, cpu_name, time_side_by_side
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
CACHE_KIND = "layer-costs"
IN_CONTEXT = "in_context"
"""The profile name that asks a search's cost model for latencies from :func:`measure_layer_costs`."""


class LayerCostError(ValueError):
    """Bad input to the layer-cost measurement or estimator; the message names the value and the choices."""


@dataclass(frozen=True)
class LayerCostConfig:
    """Knobs of :func:`measure_layer_costs`: timed runs and warm-up, threads (None: torch's current count),
    quantized engine, the kernels measured, and the per-machine cache (``cache_dir`` None: data/layer_costs)."""

    repeats: int = 15
    warmup: int = 3
    threads: int | None = None
    engine: str = "auto"
    kernels: tuple[str, ...] = KERNELS
    use_cache: bool = True
    cache_dir: str | Path | None = None

    def __post_init__(self) -> None:
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
    the rest of the FP32 model, ``context_ms[kernel]`` (per layer on it: see the module docstring); ``sources``
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
    model: nn.Module | None = field(default=None, compare=False, repr=False)

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
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k not in ("model", "layers", "sinks")}
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
        context = costs.context_ms.get(kernel, 0.0)
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


def measure_layer_costs(
    model: nn.Module,
    example: Any,
    *,
    config: LayerCostConfig | None = None,
    calib: Any | None = None,
    timer: Timer = time_side_by_side,
) -> LayerCosts:
    """Per-layer costs of ``model`` in context on ``example`` (one batch, of the size the estimates are for),
    from the per-machine cache when its key matches (see the module docstring). ``calib``: calibration data of
    the int8 probe (None: ``example``); ``timer``: :func:`~workbench.hardware.timing.time_side_by_side` or a
    stand-in of its signature (tests). Never modifies ``model``."""
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
    costs = _measure(model, example, cfg, key, calib if calib is not None else example, timer)
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
        "code": code_fingerprint(
            CACHE_KIND, kernels_pkg, deploy_pkg, Path(__file__), Path(__file__).with_name("layer_links.py")
        )[:16],
    }


def _cache_path(cfg: LayerCostConfig, key: dict[str, Any]) -> Path:
    folder = Path(cfg.cache_dir) if cfg.cache_dir is not None else data_dir() / "layer_costs"
    return folder / f"{sha256_hex(json.dumps(key, sort_keys=True))[:20]}.json"


@contextlib.contextmanager
def _engine(engine: str) -> Iterator[None]:
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def _probe_plan(model: nn.Module, layers: list[str], kernel: str) -> QuantPlan:
    (spec, kinds), modules = PROBES[kernel], dict(model.named_modules())
    return QuantPlan({n: spec for n in layers if spec is not None and layer_kind(modules[n]) in kinds})


def _capture(
    module: nn.Module, run: Callable[[], Any], layers: list[str]
) -> dict[str, tuple[nn.Module, Any, Any]]:
    """Layer -> (its module in ``module``, its input, its output) from one ``run()`` (a layer fused away or
    traced through by FX, whose module is never called, is missing)."""
    seen: dict[str, tuple[nn.Module, Any, Any]] = {}
    handles = []
    for name in layers:
        try:
            mod = get_module(module, name)
        except AttributeError:  # fused away by FX: no module of its own
            continue
        handles.append(mod.register_forward_hook(_recorder(seen, name)))
    try:
        with torch.inference_mode():
            run()
    finally:
        for h in handles:
            h.remove()
    return seen


def _recorder(seen: dict[str, tuple[nn.Module, Any, Any]], name: str) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple, out: Any) -> None:  # first call only; returns None: output kept
        seen.setdefault(name, (module, args[0], out))

    return hook


def _measure(
    model: nn.Module, example: Any, cfg: LayerCostConfig, key: dict[str, Any], calib: Any, timer: Timer
) -> LayerCosts:
    layers = quantizable_layers(model)
    captured, fns = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kernel in cfg.kernels:
            plan = _probe_plan(model, layers, kernel)
            if kernel != "fp32" and not len(plan):
                continue
            try:
                dep = deploy(model, plan, calib, engine=key["engine"])
            except DeployInputError:  # int8 probe on integer inputs (token ids): deploy refuses such plans
                continue
            fns[f"model|{kernel}"] = _fixed_call(dep, example)
            with _engine(dep.engine):
                captured[kernel] = _capture(dep.module, lambda d=dep: d(example), layers)
    missing = [n for n in layers if n not in captured.get("fp32", {})]
    if (
        missing
    ):  # traced through by FX (e.g. a SAME-padding conv): the float model's own layer, as FP32 runs it
        float_model = copy.deepcopy(model).eval()
        captured["fp32"] |= _capture(float_model, lambda: float_model(example), missing)
    for kernel, seen in captured.items():
        for name, (mod, x, _) in seen.items():
            if kernel_of_module(mod) == kernel:
                fns[f"{name}|{kernel}"] = _fixed_call(mod, x)
    fns.update(_conversion_calls(captured))
    # whole deployments round-robin among themselves, as plans are timed; layers and conversions apart (the
    # allocations of hundreds of layer calls in between slowed the whole models by up to 60 % on Lite1)
    models = {k: f for k, f in fns.items() if k.startswith("model|")}
    stats = {}
    with _engine(key["engine"]):
        for group in (models, {k: f for k, f in fns.items() if k not in models}):
            stats |= timer(group, example, repeats=cfg.repeats, warmup=cfg.warmup, threads=key["threads"])
    return _assemble(model, layers, key, {k: s.median_ms for k, s in stats.items()}, cfg.kernels)


def _fixed_call(fn: Callable[..., Any], *args: Any) -> Callable[..., Any]:
    """``fn(*args)`` whatever the timer passes (it calls each function on the example: a tensor, a tuple or a
    dict of keyword inputs such as token ids)."""
    return lambda *_, **__: fn(*args)


def _conversion_calls(captured: dict[str, dict[str, tuple]]) -> dict[str, Callable[..., Any]]:
    """``quantize`` of each int8 layer's float input (its FP32 deployment's, onto the int8 layer's grid) and
    ``dequantize`` of its int8 output."""
    fns: dict[str, Callable[..., Any]] = {}
    for name, (_, xq, out) in captured.get("int8_static", {}).items():
        fp32 = captured["fp32"].get(name)
        if isinstance(xq, torch.Tensor) and xq.is_quantized and fp32 is not None:
            s, z = xq.q_scale(), xq.q_zero_point()
            fns[f"{name}|quantize"] = _fixed_call(torch.quantize_per_tensor, fp32[1], s, z, xq.dtype)
        if isinstance(out, torch.Tensor) and out.is_quantized:
            fns[f"{name}|dequantize"] = _fixed_call(out.dequantize)
    return fns


def _assemble(
    model: nn.Module, layers: list[str], key: dict[str, Any], ms: dict[str, float], kernels: tuple[str, ...]
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
                       sources, sinks, model=model)  # fmt: skip
    for kernel in (k for k in kernels if k in models and k != "fp32"):
        df = estimate_breakdown(costs, _probe_plan(model, layers, kernel))
        on_kernel = int((df["kernel"] == kernel).sum())
        if on_kernel:
            costs.context_ms[kernel] = (models[kernel] - df.attrs["latency_ms"]) / on_kernel
    return costs
