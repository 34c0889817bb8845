"""Deployment: a plan converted to real kernels on this CPU, measured against FP32 side by side.

Kernel dispatch (seed 002) follows :func:`workbench.hardware.dispatch.dispatch_plan` on a profile:

- integer layers run torch.ao quantized kernels (FX graph mode, x86 / onednn engine: ``quantized::conv2d``,
  ``quantized::linear``, fused conv-bn-relu, int8 residual adds). Weights below 8 bits are stored on their own
  grid inside the int8 container (the observer's integer range is the plan's, so a 4-bit layer uses codes
  -7..7), activations below 8 bits likewise use the plan's range (0..15 for 4 bits): the int8 kernel computes the
  low-bit arithmetic exactly;
- 16-bit layers run in bfloat16 (weights and input cast, channels-last convolution, output cast back);
- every other layer (float, weight-only integer, or a kernel the profile lacks) stays in float32, with the
  plan's quantized / pruned / low-rank weights baked in;
- quantize / dequantize nodes sit at every boundary between the integer and float regions (inserted by FX);
- convolutional models run channels-last throughout (the input is converted once, float weights too), the memory
  format of the quantized kernels, so that no residual add mixes NCHW and NHWC tensors.

Non-layer ops (residual adds, ReLUs, pooling) run in the integer domain when every layer of the module that owns
them does (the same rule as the cost estimator). The caller's model is never modified.

Inputs: static int8 quantizes the model's float input (the root observer calibrates its range), so it needs a
model fed float tensors. Models fed integer tensors (token ids, attention masks), as transformers are, run on the
dynamic path instead (:func:`workbench.hardware.dynamic.compare_linear_deployments`: dynamic int8 Linear kernels
and bf16, no tracing): :func:`choose_kernels` picks between the two, :func:`compare_kernels` measures the
dynamic path, and :func:`deploy` refuses integer inputs with :class:`DeployInputError` naming them.

Devices: the torch.ao integer kernels are CPU kernels, so a plan with integer layers deploys only on the CPU
(``device=`` anything else raises :class:`workbench.devices.DeviceError`); a plan whose layers all run in bf16 /
fp32 deploys on any device torch has (CUDA included).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn

from workbench.devices import DeviceError, model_device, resolve_device
from workbench.hardware.dispatch import (
    LayerDispatch,
    dispatch_plan,
    dispatch_table,
    int_containers,
    int_followers,
)
from workbench.hardware.profile import PrecisionProfile, load_profile
from workbench.quant.inputs import (
    call_model,
    concat_inputs,
    first_tensor,
    input_tensors,
    move_inputs,
    primary_output,
    split_batch,
    take_inputs,
)
from workbench.quant.introspect import quantizable_layers
from workbench.quant.quantizers import int_range
from workbench.quant.spec import PlanError, QuantPlan, QuantSpec
from workbench.quant.swap import get_module, quant_modules, quantize_model, set_module

EXECUTABLE: tuple[str, ...] = ("fp32", "bf16", "int8")  # what this CPU runs through torch
ENGINES: tuple[str, ...] = ("x86", "onednn", "fbgemm")
DEFAULT_PROFILE = "cpu_measured"
KERNELS: tuple[str, ...] = ("auto", "static", "dynamic", "bf16")
"""Deployment paths: ``static`` int8 through torch.ao FX (float-input models, :func:`measure_deployment`),
``dynamic`` int8 Linear kernels with bf16 and FP32 side by side, ``bf16`` alone against FP32
(:func:`compare_kernels`), ``auto`` = :func:`choose_kernels`."""


class DeployInputError(ValueError):
    """The model's inputs do not suit the requested deployment path (e.g. token ids under static int8)."""


def integer_inputs(inputs: Any) -> list[tuple[str, str]]:
    """``(name, dtype)`` of every non-float tensor in one batch of inputs (a tensor, a tuple or a dict of
    tensors), e.g. ``[("input_ids", "int64"), ("attention_mask", "int64")]``; a bare tensor is ``"input"``."""
    return [
        (path or "input", str(t.dtype).removeprefix("torch."))
        for path, t in input_tensors(inputs)
        if not (t.is_floating_point() or t.is_complex())
    ]


def static_input_problem(inputs: Any) -> str | None:
    """Why static int8 (FX) cannot deploy a model fed ``inputs`` (one batch), or None when it can: static int8
    observes and quantizes the model's float input, so integer tensors (token ids, masks) have no place in it."""
    if not input_tensors(inputs):
        return f"the inputs hold no tensor ({type(inputs).__name__})"
    ints = integer_inputs(inputs)
    if not ints:
        return None
    (name, dtype), rest = ints[0], ints[1:]
    also = f" (also {', '.join(f'{n!r}: {d}' for n, d in rest)})" if rest else ""
    return (
        f"input {name!r} is {dtype}{also}: static int8 quantizes float inputs; use --kernels dynamic or bf16 "
        "(in Python workbench.hardware.deploy.compare_kernels: dynamic int8 Linear kernels or bf16, no tracing)"
    )


def choose_kernels(inputs: Any) -> tuple[str, str]:
    """``(kernels, reason)`` for ``kernels="auto"``, from one batch of the model's inputs: ``"static"`` (int8
    through FX, as for CNNs) when the model is fed a single float tensor, ``"dynamic"`` otherwise (integer
    inputs such as token ids, or several inputs): dynamic int8 and bf16 side by side with FP32."""
    ints = integer_inputs(inputs)
    if ints:
        named = ", ".join(f"{n!r} ({d})" for n, d in ints)
        return (
            "dynamic",
            f"integer input(s) {named}: dynamic int8 / bf16 (static int8 quantizes float inputs)",
        )
    if not isinstance(inputs, torch.Tensor):
        n = len(input_tensors(inputs))
        return "dynamic", f"{n} input tensors: dynamic int8 / bf16 (static int8 is for a single float input)"
    return "static", "a single float input: static int8 through torch.ao FX"


def cpu_has_vnni() -> bool:
    """True when the CPU has AVX512-VNNI or AVX-VNNI (int8 dot products without 16-bit saturation)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)
    except OSError:
        pass
    return False


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


class Bf16Layer(nn.Module):
    """A float layer run in bfloat16: input and weights cast, channels-last for convolutions, output cast back."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.channels_last = any(isinstance(m, nn.Conv2d) for m in layer.modules())
        layer = copy.deepcopy(layer).to(torch.bfloat16)
        if self.channels_last:
            layer = layer.to(memory_format=torch.channels_last)
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.bfloat16)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.layer(x).float()


# ============================================================================================ conversion


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last memory format when it is a 4-D image batch (unchanged otherwise)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _input_channels_last(gm: torch.fx.GraphModule) -> None:
    """Make the deployed graph take its input channels-last: quantized convs run NHWC, and a float stem fed NCHW
    would hand NCHW tensors to every residual add (a slow strided path)."""
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            with gm.graph.inserting_after(node):
                new = gm.graph.call_function(channels_last, (node,))
            node.replace_all_uses_with(new, delete_user_cb=lambda user, new=new: user is not new)
            break
    gm.graph.lint()
    gm.recompile()


def _baked_float_model(model: nn.Module, plan: QuantPlan) -> nn.Module:
    """A float copy of ``model`` whose plan layers carry their quantized / pruned / low-rank weights (BatchNorm
    folded into them); activations untouched."""
    weights_only = QuantPlan(
        {n: s.with_(a_bits=32, a_dynamic=False) for n, s in plan.items() if s.transforms_weight}
    )
    if not len(weights_only):
        return copy.deepcopy(model).eval()
    qmodel = quantize_model(model, weights_only, None)
    for name, qm in quant_modules(qmodel).items():
        with torch.no_grad():
            w = qm.quantized_weight().detach().clone()
            bias = qm.bias.detach().clone() if qm.bias is not None else None
        if isinstance(qm, nn.Conv2d):
            new: nn.Module = nn.Conv2d(
                qm.in_channels,
                qm.out_channels,
                qm.kernel_size,
                stride=qm.stride,
                padding=qm.padding,
                dilation=qm.dilation,
                groups=qm.groups,
                bias=bias is not None,
                padding_mode=qm.padding_mode,
                device=w.device,
                dtype=w.dtype,
            )
        else:
            new = nn.Linear(
                qm.in_features, qm.out_features, bias=bias is not None, device=w.device, dtype=w.dtype
            )
        with torch.no_grad():
            new.weight.copy_(w)
            if bias is not None:
                new.bias.copy_(bias)
        set_module(qmodel, name, new.eval())
    # the BatchNorms folded into the baked weights become exact identities (eps 0, unit variance), not
    # nn.Identity: FX then still matches conv-bn-relu and fuses the ReLU into the integer kernel
    for _conv, bn_name in getattr(qmodel, "folded_bn", []):
        old = get_module(model, bn_name)
        ident = nn.BatchNorm2d(old.num_features, eps=0.0, device=old.running_mean.device).eval()
        set_module(qmodel, bn_name, ident)
    for attr in ("quant_plan", "folded_bn"):
        if hasattr(qmodel, attr):
            delattr(qmodel, attr)
    return qmodel.eval()


def _weight_observer(spec: QuantSpec, d: LayerDispatch):
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    exact = (
        spec.w_symmetric and spec.channel_bits is None and spec.granularity in ("per_channel", "per_tensor")
    )
    bits = d.w_bits if exact else 8
    qmin, qmax = int_range(min(bits, 8), symmetric=True)
    if spec.granularity == "per_tensor" and exact:
        return MinMaxObserver.with_args(
            dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=qmin, quant_max=qmax
        )
    return PerChannelMinMaxObserver.with_args(
        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=qmin, quant_max=qmax
    )


def _default_weight_observer():
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    return PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)


def _act_observer(a_bits: int, observer: str, reduce_range: bool):
    from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver

    qmax = 2 ** min(a_bits, 8) - 1
    if a_bits >= 8 and reduce_range:
        qmax = 127
    cls = MinMaxObserver if observer == "minmax" else HistogramObserver
    return cls.with_args(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=qmax)


@dataclass
class DeployedModel:
    """A plan on real kernels: ``module`` runs it; ``dispatch`` says which kernel each layer got."""

    module: nn.Module
    plan: QuantPlan
    profile: str
    engine: str
    dispatch: dict[str, LayerDispatch]
    notes: list[str] = field(default_factory=list)

    def __call__(self, x: Any) -> Any:
        return call_model(self.module, x)

    def table(self) -> pd.DataFrame:
        """One row per layer: requested and chosen precision, and the kernel module that runs it."""
        df = dispatch_table(self.dispatch)
        mods = dict(self.module.named_modules())
        df["kernel"] = [
            type(mods[n]).__module__ + "." + type(mods[n]).__name__ if n in mods else "" for n in df["layer"]
        ]
        return df

    def precision_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.dispatch.values():
            out[d.precision] = out.get(d.precision, 0) + 1
        return out


def _calib_batches(calib: Any, max_batches: int | None) -> list[Any]:
    if isinstance(calib, torch.Tensor):
        return [calib]
    out = []
    for i, batch in enumerate(calib):
        if max_batches is not None and i >= max_batches:
            break
        out.append(split_batch(batch)[0])  # a tensor, a tuple or a dict of tensors, as the loader yields it
    if not out:
        raise PlanError("calibration data is empty: pass a tensor or a loader with at least one batch")
    return out


def deploy(
    model: nn.Module,
    plan: QuantPlan,
    calib: Any,
    *,
    profile: PrecisionProfile | str = DEFAULT_PROFILE,
    strict: bool = False,
    engine: str = "x86",
    max_calib_batches: int | None = 8,
    device: str | torch.device | None = None,
) -> DeployedModel:
    """``model`` under ``plan`` on real kernels of this CPU (see the module docstring). ``calib``: a tensor or a
    loader of ``(x, y)`` batches for the activation ranges. Never modifies ``model``.

    ``device``: where the deployed model runs (None: where ``model`` is; the model is copied there). Integer
    layers run torch.ao quantized kernels, which exist only for the CPU: a plan with any layer dispatched to an
    integer kernel raises :class:`workbench.devices.DeviceError` on another device (before any conversion). A
    plan whose layers all run in bf16 / fp32 deploys on any device (``cuda``: bf16 layers use its kernels).
    """
    from torch.ao.quantization import QConfig, QConfigMapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    dev = model_device(model) if device is None else resolve_device(device)
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not valid; choose one of {ENGINES}")
    if engine not in torch.backends.quantized.supported_engines:
        raise RuntimeError(
            f"quantized engine {engine!r} is not in this torch build ({torch.backends.quantized.supported_engines})"
        )
    if not isinstance(plan, QuantPlan):
        raise PlanError(f"plan must be a QuantPlan, got {type(plan).__name__}")
    plan.validate(model)
    raw_batches = _calib_batches(calib, max_calib_batches)
    problem = static_input_problem(raw_batches[0])
    if problem is not None:  # before FX traces the model and fails on integer tensors obscurely
        raise DeployInputError(problem)
    prof = load_profile(profile)
    layers = quantizable_layers(model)
    executable = [p for p in EXECUTABLE]
    disp = dispatch_plan(model, plan, prof, layers=layers, strict=strict, executable=executable)
    _check_device(dev, disp)
    if model_device(model) != dev:
        model = copy.deepcopy(model).to(dev)
    notes: list[str] = []
    batches = [move_inputs(x, dev) for x in raw_batches]
    reduce_range = not cpu_has_vnni() and engine in ("x86", "fbgemm")
    if reduce_range:
        notes.append(
            "CPU without VNNI: 8-bit activations use 7 bits (reduce_range) to avoid int16 saturation"
        )

    baked = _baked_float_model(model, plan)
    qmap = QConfigMapping().set_global(None)
    int_layers = [n for n, d in disp.items() if d.is_int]
    for name in int_layers:
        spec = plan.get(name) or QuantSpec()
        d = disp[name]
        if spec.granularity == "per_group" or spec.channel_bits is not None or not spec.w_symmetric:
            notes.append(
                f"{name}: {spec.granularity} / mixed-channel / asymmetric weights re-quantized to int8 per channel"
            )
        qmap.set_module_name(
            name,
            QConfig(
                activation=_act_observer(d.a_bits, spec.a_observer, reduce_range),
                weight=_weight_observer(spec, d),
            ),
        )
    shared = QConfig(
        activation=_act_observer(8, "histogram", reduce_range), weight=_default_weight_observer()
    )
    for path in sorted(int_containers(model, disp) | int_followers(model, disp)):
        if path in disp:
            continue
        if path == "":
            qmap.set_global(shared)
        else:
            qmap.set_module_name(path, shared)
    for name, d in disp.items():
        if d.weight_only:
            notes.append(
                f"{name}: weight-only {plan[name].w_bits}-bit runs in float with the quantized weights baked in"
            )
        if plan.get(name) is not None and plan[name].method in ("prune", "lowrank"):
            notes.append(
                f"{name}: {plan[name].method} baked into a dense weight (no sparse / factorised kernel)"
            )

    previous_engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="torch.ao")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            if any(isinstance(m, nn.Conv2d) for m in baked.modules()):
                baked = baked.to(memory_format=torch.channels_last)
            first = batches[0]
            example = tuple(first.values()) if isinstance(first, dict) else first
            prepared = prepare_fx(baked, qmap, example if isinstance(example, tuple) else (example,))
            with torch.no_grad():
                for x in batches:
                    call_model(prepared, x)
            converted = convert_fx(prepared)
    finally:
        torch.backends.quantized.engine = previous_engine
    for name, d in disp.items():
        if d.precision == "bf16":
            try:
                sub = get_module(converted, name)
            except AttributeError:
                notes.append(f"{name}: fused away by FX; left in float32")
                continue
            set_module(converted, name, Bf16Layer(sub))
    if any(isinstance(m, nn.Conv2d) for m in baked.modules()):
        _input_channels_last(converted)
    converted.eval()
    return DeployedModel(converted, plan, prof.name, engine, disp, notes)


def _check_device(dev: torch.device, disp: dict[str, LayerDispatch]) -> None:
    """Refuse a deployment with integer kernels anywhere but the CPU (torch.ao has no other kernels)."""
    if dev.type == "cpu":
        return
    int_layers = [n for n, d in disp.items() if d.is_int]
    if int_layers:
        raise DeviceError(
            f"cannot deploy on {dev}: int8 deployment is CPU-only (torch.ao quantized kernels run only on the "
            f"CPU) and layer(s) {int_layers} dispatch to integer kernels. Deploy with device='cpu' (a model on "
            f"{dev} is copied there), or use a plan whose layers all run in bf16 / fp32 to deploy on {dev}"
        )


# ============================================================================================ measurement


@dataclass(frozen=True)
class LatencyStats:
    """Wall-clock latency of one batch, over ``len(times_ms)`` timed runs after warm-up."""

    median_ms: float
    min_ms: float
    max_ms: float
    times_ms: tuple[float, ...]

    @classmethod
    def from_times(cls, seconds: list[float]) -> LatencyStats:
        ms = [1000.0 * s for s in seconds]
        return cls(statistics.median(ms), min(ms), max(ms), tuple(ms))

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_ms": self.median_ms,
            "min_ms": self.min_ms,
            "max_ms": self.max_ms,
            "times_ms": list(self.times_ms),
        }


def time_side_by_side(
    fns: dict[str, Callable[..., Any]],
    x: Any,
    *,
    repeats: int = 7,
    warmup: int = 2,
    threads: int | None = None,
) -> dict[str, LatencyStats]:
    """Latency of several callables on the same input, interleaved run by run (so drift hits all alike).

    ``x``: a tensor (``fn(x)``), a tuple (``fn(*x)``) or a dict of tensors (``fn(**x)``)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    # CUDA runs asynchronously: synchronise around each timed call so the time is the kernels', not the launch's
    lead = first_tensor(x)
    on_cuda = lead is not None and lead.device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(lead.device)) if on_cuda else (lambda: None)
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    times: dict[str, list[float]] = {k: [] for k in fns}
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                for fn in fns.values():
                    call_model(fn, x)
            for _ in range(repeats):
                for k, fn in fns.items():
                    sync()
                    t0 = time.perf_counter()
                    call_model(fn, x)
                    sync()
                    times[k].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(previous)
    return {k: LatencyStats.from_times(v) for k, v in times.items()}


@dataclass(frozen=True)
class DeployConfig:
    """Knobs of :func:`measure_deployment` (defaults work on digits)."""

    batch_size: int = 32
    threads: int | None = None
    repeats: int = 7
    warmup: int = 2
    engine: str = "x86"
    strict: bool = False
    max_calib_batches: int | None = 8

    def __post_init__(self) -> None:
        for name in ("batch_size", "repeats"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be None or an integer >= 1, got {self.threads!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine={self.engine!r} is not valid; choose one of {ENGINES}")


@dataclass(frozen=True)
class DeployResult:
    """FP32 and deployed model side by side: latency of one batch and accuracy."""

    fp32_latency_ms: float
    deployed_latency_ms: float
    speedup: float
    fp32_accuracy: float
    accuracy: float
    batch_size: int
    threads: int
    engine: str
    profile: str
    fp32: LatencyStats
    deployed: LatencyStats
    precision_counts: dict[str, int]
    layers: pd.DataFrame
    notes: tuple[str, ...]
    cpu: str
    top1_agreement: float
    estimated_latency_ms: float | None = None
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return {
            "fp32_latency_ms": self.fp32_latency_ms,
            "deployed_latency_ms": self.deployed_latency_ms,
            "speedup": self.speedup,
            "fp32_accuracy": self.fp32_accuracy,
            "accuracy": self.accuracy,
            "batch_size": self.batch_size,
            "threads": self.threads,
            "engine": self.engine,
            "profile": self.profile,
            "cpu": self.cpu,
            "device": self.device,
            "top1_agreement": self.top1_agreement,
            "estimated_latency_ms": self.estimated_latency_ms,
            "precision_counts": self.precision_counts,
            "fp32_times": self.fp32.to_dict(),
            "deployed_times": self.deployed.to_dict(),
            "layers": self.layers.to_dict(orient="records"),
            "notes": list(self.notes),
        }


def measure_deployment(
    model: nn.Module,
    plan: QuantPlan,
    calib: Any,
    *,
    example_input: Any,
    evaluate: Callable[[nn.Module], float] | None = None,
    profile: PrecisionProfile | str = DEFAULT_PROFILE,
    config: DeployConfig | None = None,
    device: str | torch.device | None = None,
) -> DeployResult:
    """Deploy ``plan`` and measure it against the FP32 model (eager, eval mode) in one run, interleaved:
    median latency of a batch of ``config.batch_size`` samples (from ``example_input``), ``evaluate(model)``
    (accuracy; NaN without ``evaluate``) of both, and the top-1 agreement of the two on that batch.

    ``device``: where both models run and are timed (None: where ``model`` is). int8 deployment is CPU-only:
    on another device a plan with integer layers raises :class:`workbench.devices.DeviceError` before anything
    is converted or timed (see :func:`deploy`); a bf16 / fp32 plan runs there, timed with CUDA synchronised.
    """
    from workbench.hardware.estimate import CostEstimator

    cfg = config or DeployConfig()
    dev = model_device(model) if device is None else resolve_device(device)
    deployed = deploy(
        model,
        plan,
        calib,
        profile=profile,
        strict=cfg.strict,
        engine=cfg.engine,
        max_calib_batches=cfg.max_calib_batches,
        device=dev,
    )
    fp32 = copy.deepcopy(model).to(dev).eval()
    x = move_inputs(_batch(example_input, cfg.batch_size), dev)
    previous_engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = cfg.engine
    try:
        stats = time_side_by_side(
            {"fp32": fp32, "deployed": deployed.module},
            x,
            repeats=cfg.repeats,
            warmup=cfg.warmup,
            threads=cfg.threads,
        )
        with torch.inference_mode():
            ref_top1 = primary_output(call_model(fp32, x)).argmax(1)
            top1 = primary_output(call_model(deployed.module, x)).argmax(1)
            agree = float((ref_top1 == top1).float().mean())
        fp32_acc = float(evaluate(fp32)) if evaluate is not None else math.nan
        acc = float(evaluate(deployed.module)) if evaluate is not None else math.nan
    finally:
        torch.backends.quantized.engine = previous_engine
    threads = cfg.threads or torch.get_num_threads()
    est = None
    prof = load_profile(profile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = (
            CostEstimator(model, example_input, prof, batch_size=cfg.batch_size)
            .estimate(plan, deployed.dispatch)
            .latency_ms
        )
    return DeployResult(
        fp32_latency_ms=stats["fp32"].median_ms,
        deployed_latency_ms=stats["deployed"].median_ms,
        speedup=stats["fp32"].median_ms / stats["deployed"].median_ms,
        fp32_accuracy=fp32_acc,
        accuracy=acc,
        batch_size=cfg.batch_size,
        threads=threads,
        engine=cfg.engine,
        profile=prof.name,
        fp32=stats["fp32"],
        deployed=stats["deployed"],
        precision_counts=deployed.precision_counts(),
        layers=deployed.table(),
        notes=tuple(deployed.notes),
        cpu=cpu_name(),
        top1_agreement=agree,
        estimated_latency_ms=est,
        device=str(dev),
    )


def _batch(example_input: Any, batch_size: int) -> Any:
    """A batch of ``batch_size`` real samples (the example repeated when it holds fewer); a tuple or a dict of
    tensors keeps its structure."""
    if not isinstance(example_input, torch.Tensor):
        n = int(first_tensor(example_input).shape[0])  # type: ignore[union-attr]
        parts = [example_input] * math.ceil(batch_size / n)
        return take_inputs(concat_inputs(parts), batch_size)
    n = example_input.shape[0]
    if n >= batch_size:
        return example_input[:batch_size].contiguous()
    reps = math.ceil(batch_size / n)
    return example_input.repeat(reps, *([1] * (example_input.dim() - 1)))[:batch_size].contiguous()


# ============================================================================================ dynamic path


def _dynamic_linear_layers(model: nn.Module, plan: QuantPlan | None) -> tuple[list[str], list[str]]:
    """The nn.Linear layers dynamic int8 converts (every one without a plan; with one, those at <= 8 weight
    bits), and those of them whose plan asks for fewer than 8 bits."""
    converted, lower = [], []
    for name, m in model.named_modules():
        if type(m) is not nn.Linear:
            continue
        spec = plan.get(name) if plan is not None else None
        if plan is None or (spec is not None and spec.w_bits is not None and spec.w_bits <= 8):
            converted.append(name)
            if spec is not None and spec.w_bits < 8:
                lower.append(name)
    return converted, lower


def compare_kernels(
    task: Any,
    plan: QuantPlan | None = None,
    *,
    kernels: str = "dynamic",
    config: DeployConfig | None = None,
    split: str = "test",
) -> pd.DataFrame:
    """The dynamic deployment path, for models that static int8 cannot take (token ids, several inputs, dict
    inputs, output objects): one row per variant, side by side with FP32 on the same batch.

    ``kernels="dynamic"``: FP32, torch.ao dynamic int8 (with ``plan``, its Linear layers at <= 8 weight bits;
    every Linear without one) and bf16, by :func:`workbench.hardware.dynamic.compare_linear_deployments`.
    ``kernels="bf16"``: FP32 and the whole model in bfloat16 (the plan's bits do not apply). Columns:
    ``variant``, ``median_ms`` / ``min_ms`` / ``max_ms`` (one batch of ``config.batch_size`` inputs, runs
    interleaved), ``speedup_vs_fp32``, ``metric`` (the task's metric on ``split``), ``cosine_to_fp32`` and
    ``top1_agreement`` (fidelity of the primary outputs to FP32 on ``split``). ``attrs`` hold the batch size,
    repeats, threads, split, engine, kernels and notes."""
    if kernels not in ("dynamic", "bf16"):
        raise ValueError(
            f"kernels={kernels!r}: compare_kernels runs 'dynamic' or 'bf16' (static: measure_deployment)"
        )
    cfg = config or DeployConfig()
    if plan is not None:
        plan.validate(task.model)
    threads = cfg.threads or torch.get_num_threads()
    notes: list[str] = []
    previous_engine = torch.backends.quantized.engine
    if cfg.engine not in torch.backends.quantized.supported_engines:
        raise RuntimeError(
            f"quantized engine {cfg.engine!r} is not in this torch build ({torch.backends.quantized.supported_engines})"
        )
    flags = {m: m.training for m in task.model.modules()}  # run in eval mode, flags given back afterwards
    torch.backends.quantized.engine = cfg.engine
    try:
        if kernels == "dynamic":
            from workbench.hardware.dynamic import compare_linear_deployments

            converted, lower = _dynamic_linear_layers(task.model, plan)
            df = compare_linear_deployments(
                task, plan, batch_size=cfg.batch_size, repeats=cfg.repeats, warmup=cfg.warmup, threads=threads,
                split=split,
            )  # fmt: skip
            notes.append(
                f"dynamic int8: {len(converted)} nn.Linear layer(s) run torch.ao dynamic int8 kernels (int8 "
                "weights per output channel, activations quantized per batch at run time); every other layer "
                "(embeddings, norms, attention matmuls) runs in float32"
            )
            if lower:
                notes.append(
                    f"dynamic int8: {len(lower)} layer(s) planned below 8 bits run at int8 (no lower-bit "
                    "dynamic kernels); quantize / qat measure the planned bits"
                )
            notes.append("bf16: the whole model in bfloat16 (integer inputs stay integers)")
        else:
            from workbench.hardware.dynamic import compare_linear_deployments

            df = compare_linear_deployments(
                task, plan, batch_size=cfg.batch_size, repeats=cfg.repeats, warmup=cfg.warmup, threads=threads,
                split=split, variants=("bf16",),
            )  # fmt: skip
            notes.append(
                "bf16: the whole model in bfloat16 (integer inputs stay integers); the plan's bits do not apply"
            )
    finally:
        torch.backends.quantized.engine = previous_engine
        for m, flag in flags.items():
            m.training = flag
    df.attrs.update(
        {
            "batch_size": cfg.batch_size,
            "repeats": cfg.repeats,
            "threads": threads,
            "split": split,
            "engine": cfg.engine,
            "kernels": kernels,
            "cpu": cpu_name(),
            "device": str(model_device(task.model)),
            "notes": notes,
        }
    )
    return df
