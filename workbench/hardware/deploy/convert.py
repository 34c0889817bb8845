"""Deployment: a plan converted to real kernels on this CPU, measured against FP32 side by side.

Kernel dispatch (seed 002) follows :func:`workbench.hardware.dispatch.dispatch_plan` on a profile:

- integer layers run torch.ao quantized kernels (FX graph mode; engine ``auto``: x86 on a CPU with VNNI, qnnpack
  with onednn depthwise kernels without, see :func:`resolve_engine`: ``quantized::conv2d``, ``quantized::linear``,
  fused conv-bn-relu). Weights below 8 bits are stored on their own
  grid inside the int8 container (the observer's integer range is the plan's, so a 4-bit layer uses codes
  -7..7), activations below 8 bits likewise use the plan's range (0..15 for 4 bits): the int8 kernel computes the
  low-bit arithmetic exactly;
- 16-bit layers run in bfloat16 (weights and input cast, channels-last convolution, output cast back);
- weight-only layers (integer weights, float activations) and integer Embedding tables run the kernel menu's
  modules (:mod:`workbench.hardware.kernels`: int4 / int8 weight-only Linear on bf16 activations, packed
  lookups), baked from the simulation's codes; one the menu lacks falls back to float32 with a named reason;
- every other layer (float, or a kernel the profile lacks) stays in float32, with the plan's quantized / pruned /
  low-rank weights baked in;
- quantize / dequantize nodes sit at every boundary between the integer and float regions (inserted by FX);
- convolutional models run channels-last throughout (the input is converted once, float weights too), the memory
  format of the quantized kernels, so that no residual add mixes NCHW and NHWC tensors.

Numerics follow the plan's fake-quant simulation (:func:`deploy`): the simulation's weight codes and scales, its
input grid for each integer layer (the quantized op feeding the layer requantizes to it; inputs are clamped to
it), residual adds and other non-layer ops in float as simulated (ReLU / ReLU6 / max pooling between integer
layers stay integer: they commute with the grid), float32 outputs for a Linear / 1x1 conv feeding a float op, and
on CPUs without VNNI 7-bit activation grids in both (the exact setting of the x86 / fbgemm kernels there). The
caller's model is never modified.

Inputs: static int8 quantizes the model's float input (the root observer calibrates its range), so it needs a
model fed float tensors. Models fed integer tensors (token ids, attention masks), as transformers are, run on the
dynamic path instead (:func:`workbench.hardware.dynamic.compare_linear_deployments`: dynamic int8 Linear kernels
and bf16, no tracing): :func:`choose_kernels` picks between the two, :func:`compare_kernels` measures the
dynamic path, and :func:`deploy` refuses integer inputs with :class:`DeployInputError` naming them when a layer
needs static int8 (a plan of weight-only / bf16 / float layers needs no tracing and deploys them).

Devices: the torch.ao integer kernels are CPU kernels, so a plan with integer layers deploys only on the CPU
(``device=`` anything else raises :class:`workbench.devices.DeviceError`); a plan whose layers all run in bf16 /
fp32 deploys on any device torch has (CUDA included).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn

from workbench.devices import DeviceError, model_device, resolve_device
from workbench.hardware.deploy.fx_graph import _input_channels_last
from workbench.hardware.deploy.fx_int8 import (
    _baked_float_model,
    convert_fx_int8,
    int8_qconfig_mapping,
    reduce_activation_range,
    sim_input_grids,
    swap_bf16_layers,
)
from workbench.hardware.deploy.inputs import DeployInputError, static_input_problem
from workbench.hardware.dispatch import (
    LayerDispatch,
    dispatch_plan,
    dispatch_table,
)
from workbench.hardware.kernels import deploy_layers
from workbench.hardware.kernels.linear import kernel_exact_problem
from workbench.hardware.profile import INT_PRECISION_BITS, PrecisionProfile, load_profile
from workbench.hardware.timing import cpu_has_vnni
from workbench.quant.inputs import (
    call_model,
    move_inputs,
    split_batch,
)
from workbench.quant.introspect import quantizable_layers
from workbench.quant.spec import PlanError, QuantPlan
from workbench.quant.swap import get_module, quantize_model

EXECUTABLE: tuple[str, ...] = ("fp32", "bf16", "int8")  # what this CPU runs through torch
ENGINES: tuple[str, ...] = ("auto", "x86", "onednn", "fbgemm", "qnnpack")
DEFAULT_PROFILE = "cpu_measured"
REDUCE_RANGE_NOTE = (
    "CPU without VNNI: the x86 / fbgemm / onednn int8 kernels add products in 16-bit pairs, which saturate on "
    "8-bit inputs; 8-bit activations run on 7-bit grids over their calibrated ranges (reduce_range, exact on "
    "these kernels), and the simulation reported beside the deployment uses the same grids (engine='auto' picks "
    "qnnpack on such a CPU: 8 bits exactly)"
)


def resolve_engine(engine: str = "auto") -> str:
    """The quantized engine ``engine`` names; ``"auto"`` picks by what this CPU computes exactly: ``x86`` (fbgemm
    kernels, the fastest, with float32-output Linear / 1x1 kernels) on a CPU with VNNI, whose int8 dot products do
    not saturate; ``qnnpack`` without VNNI, whose kernels take 8-bit activations exactly where the x86 ones
    would need 7-bit grids (``reduce_range``); ``x86`` when this torch build lacks qnnpack."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not valid; choose one of {ENGINES}")
    if engine != "auto":
        return engine
    if cpu_has_vnni() or "qnnpack" not in torch.backends.quantized.supported_engines:
        return "x86"
    return "qnnpack"


def _reduce_range(engine: str, reduce_range: bool | None) -> bool:
    """Whether 8-bit activations go on 7-bit grids: asked, or (None) the x86 / fbgemm engines on a CPU
    without VNNI, whose int8 kernels are exact only so."""
    if reduce_range is not None:
        return reduce_range
    return engine in ("x86", "fbgemm", "onednn") and not cpu_has_vnni()


@dataclass
class DeployedModel:
    """A plan on real kernels: ``module`` runs it; ``dispatch`` says which kernel each layer got."""

    module: nn.Module
    plan: QuantPlan
    profile: str
    engine: str
    dispatch: dict[str, LayerDispatch]
    notes: list[str] = field(default_factory=list)
    simulated: nn.Module | None = None
    """The plan's fake-quant simulation the deployment took its grids from (same calibration batches)."""

    def __call__(self, x: Any) -> Any:
        """``module`` on ``x`` under its quantized :attr:`engine` (the global engine given back afterwards)."""
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = self.engine
        try:
            return call_model(self.module, x)
        finally:
            torch.backends.quantized.engine = previous

    def table(self) -> pd.DataFrame:
        """One row per layer: requested and chosen precision, and the kernel module that runs it."""
        df = dispatch_table(self.dispatch)
        mods = dict(self.module.named_modules())
        df["kernel"] = [_kernel_name(mods[n]) if n in mods else "" for n in df["layer"]]
        return df

    def precision_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.dispatch.values():
            out[d.precision] = out.get(d.precision, 0) + 1
        return out


def _kernel_module(mod: nn.Module) -> nn.Module:
    """The module that runs a deployed layer: ``mod``, or for a bare container (a layer behind its pre-op, such
    as SAME padding) the kernel it holds last."""
    children = list(mod.children())
    return children[-1] if type(mod) in (nn.Module, nn.Sequential) and children else mod


def _kernel_name(mod: nn.Module) -> str:
    """The name of the kernel module that runs a deployed layer (:func:`_kernel_module`)."""
    mod = _kernel_module(mod)
    return getattr(mod, "kernel", None) or type(mod).__module__ + "." + type(mod).__name__


def _calib_batches(calib: Any, max_batches: int | None) -> list[Any]:
    if isinstance(calib, (torch.Tensor, Mapping)):  # one batch: a tensor, or a dict of tensors (token ids)
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
    engine: str = "auto",
    max_calib_batches: int | None = 8,
    device: str | torch.device | None = None,
    reduce_range: bool | None = None,
    simulated: nn.Module | None = None,
    weight_only_kernels: bool = True,
) -> DeployedModel:
    """``model`` under ``plan`` on real kernels of this CPU (see the module docstring). ``calib``: a tensor, a
    dict of tensors or a loader of ``(x, y)`` batches for the activation ranges. Never modifies ``model``. ``engine``: the torch.ao
    quantized engine (``"auto"``: :func:`resolve_engine`, by what this CPU computes exactly; the one used is
    :attr:`DeployedModel.engine`, which the deployed model must run under).

    ``device``: where the deployed model runs (None: where ``model`` is; the model is copied there). Integer
    layers run torch.ao quantized kernels, which exist only for the CPU: a plan with any layer dispatched to an
    integer kernel raises :class:`workbench.devices.DeviceError` on another device (before any conversion). A
    plan whose layers all run in bf16 / fp32 deploys on any device (``cuda``: bf16 layers use its kernels).

    Numerics: the deployment is built from the plan's simulation (``simulated``, e.g. a model from
    ``quantize_model`` with post-training steps, copied; None: ``quantize_model`` on the same calibration batches;
    returned as :attr:`DeployedModel.simulated`): its weight codes and scales, and its input grids,
    which the quantized ops feeding each integer layer requantize to; residual adds and other non-layer ops run
    in float, as simulated. ``reduce_range`` (None: on where the kernels need it, see :data:`REDUCE_RANGE_NOTE`)
    puts 8-bit activations on 7-bit grids in both. A layer no int8 kernel computes as simulated runs its
    simulation twin in float32, with a note naming the reason.

    Weight-only layers (integer weights, float activations) and Embedding tables in the plan take their kernel from
    the menu (:mod:`workbench.hardware.kernels`: int4 / int8 weight-only Linear, packed Embedding lookup) on the
    CPU, baked from the simulation's codes; one the menu cannot run as simulated keeps its simulation twin in
    float, with a :class:`~workbench.hardware.kernels.KernelFallbackWarning` naming it and why (a
    :class:`~workbench.hardware.kernels.KernelError` under ``strict``). ``weight_only_kernels=False`` keeps them
    all in float (the baseline the kernels are measured against). A plan with no static int8 layer needs no
    tracing, so models fed token ids (transformers) deploy too.
    """
    dev = model_device(model) if device is None else resolve_device(device)
    engine = resolve_engine(engine)
    if engine not in torch.backends.quantized.supported_engines:
        raise RuntimeError(
            f"quantized engine {engine!r} is not in this torch build ({torch.backends.quantized.supported_engines})"
        )
    if not isinstance(plan, QuantPlan):
        raise PlanError(f"plan must be a QuantPlan, got {type(plan).__name__}")
    plan.validate(model)
    raw_batches = _calib_batches(calib, max_calib_batches)
    prof = load_profile(profile)
    layers = quantizable_layers(model)
    disp = dispatch_plan(model, plan, prof, layers=layers, strict=strict, executable=list(EXECUTABLE))
    disp = _tables_weight_only(model, plan, disp)
    problem = static_input_problem(raw_batches[0])
    if problem is not None and any(d.is_int for d in disp.values()):  # before FX fails on integer tensors
        raise DeployInputError(problem)
    _check_device(dev, disp)
    if model_device(model) != dev:
        model = copy.deepcopy(model).to(dev)
    batches = [move_inputs(x, dev) for x in raw_batches]
    sim = _simulation(model, plan, batches, simulated, dev)
    menu = weight_only_kernels and dev.type == "cpu"
    return _build(
        model,
        plan,
        disp,
        batches,
        sim,
        engine=engine,
        reduce_range=reduce_range,
        profile=prof.name,
        trace=problem is None,
        menu=menu,
        strict=strict,
    )


def _tables_weight_only(
    model: nn.Module, plan: QuantPlan, disp: dict[str, LayerDispatch]
) -> dict[str, LayerDispatch]:
    """``disp`` with every Embedding table of integer weights weight-only in float (its input is token ids: an
    Embedding spec's activation bits mean nothing, and no int8 kernel takes a table)."""
    modules = dict(model.named_modules())
    out = dict(disp)
    for name, d in disp.items():
        spec = plan.get(name)
        if isinstance(modules[name], nn.Embedding) and spec is not None and spec.w_bits <= 8:
            out[name] = dataclasses.replace(
                d, requested="fp32", precision="fp32", w_bits=32, a_bits=32, weight_only=True, fallback=False
            )
    return out


def _simulation(
    model: nn.Module, plan: QuantPlan, batches: list[Any], simulated: nn.Module | None, dev: torch.device
) -> nn.Module:
    """The plan's simulation the deployment follows: a private copy of ``simulated`` (checked to carry ``plan``),
    or ``quantize_model`` of ``model`` on the calibration ``batches``."""
    if simulated is None:
        return quantize_model(model, plan, [(x,) for x in batches])
    sim_plan = getattr(simulated, "quant_plan", None)
    if not isinstance(sim_plan, QuantPlan) or sim_plan.to_dict() != plan.to_dict():
        raise PlanError(
            "simulated must be the plan's fake-quant model (quantize_model(model, plan, ...)); it carries "
            + ("no plan" if sim_plan is None else "another plan")
        )
    return copy.deepcopy(simulated).to(dev).eval()


def _build(
    model: nn.Module,
    plan: QuantPlan,
    disp: dict[str, LayerDispatch],
    batches: list[Any],
    simulated: nn.Module,
    *,
    engine: str,
    reduce_range: bool | None,
    profile: str,
    trace: bool = True,
    menu: bool = True,
    strict: bool = False,
) -> DeployedModel:
    """The deployed model of :func:`deploy`, from the simulation (a private copy, changed in place); ``trace``:
    convert through torch.ao FX (float-input models; needed for int8 layers), ``menu``: weight-only layers on the
    kernel menu's modules."""
    disp, notes = _exact_dispatch(plan, disp)
    if _reduce_range(engine, reduce_range) and any(d.is_int for d in disp.values()):
        reduce_activation_range(simulated)
        notes.append(REDUCE_RANGE_NOTE)
    int_layers = [n for n, d in disp.items() if d.is_int]
    keep = tuple(
        n for n, d in disp.items() if n in plan and not d.is_int and d.requested in INT_PRECISION_BITS
    )
    baked = _baked_float_model(model, plan, simulated=simulated, keep=keep)
    menu_layers = [n for n, d in disp.items() if d.weight_only and n in plan] if menu else []
    converted = baked
    if trace:
        converted = convert_fx_int8(
            baked,
            int8_qconfig_mapping(model, disp),
            batches,
            engine=engine,
            grids=sim_input_grids(simulated, int_layers),
            leaf_types=tuple({type(get_module(baked, n)) for n in keep}),
            simulated=simulated,
        )
    choices, kernel_notes = deploy_layers(converted, simulated, plan, menu_layers, strict=strict)
    on_kernel = {c.layer for c in choices if c.handler is not None}
    notes += _float_layer_notes(plan, {n: d for n, d in disp.items() if n not in on_kernel}) + kernel_notes
    notes += swap_bf16_layers(converted, disp, baked=baked)
    if trace and any(isinstance(m, nn.Conv2d) for m in baked.modules()):
        _input_channels_last(converted)
    return DeployedModel(converted.eval(), plan, profile, engine, disp, notes, simulated=simulated.eval())


def _exact_dispatch(
    plan: QuantPlan, disp: dict[str, LayerDispatch]
) -> tuple[dict[str, LayerDispatch], list[str]]:
    """``disp`` with every integer layer that no int8 kernel computes as the simulation does moved to float32
    (it runs its simulation twin: the same numerics on float kernels), and a note naming each with its reason."""
    out, notes = dict(disp), []
    for name, d in disp.items():
        problem = kernel_exact_problem(plan[name]) if d.is_int else None
        if problem is not None:
            out[name] = dataclasses.replace(d, precision="fp32", a_bits=32, fallback=True)
            notes.append(f"{name}: runs in float32 as simulated (fake-quant on float kernels): {problem}")
    return out, notes


def _float_layer_notes(plan: QuantPlan, disp: dict[str, LayerDispatch]) -> list[str]:
    """What the float32 layers of a deployment carry: baked weight-only grids, dense pruned / low-rank weights."""
    notes = []
    for name, d in disp.items():
        if d.weight_only:
            notes.append(
                f"{name}: weight-only {plan[name].w_bits}-bit runs in float with the quantized weights baked in"
            )
        if plan.get(name) is not None and plan[name].method in ("prune", "lowrank"):
            notes.append(
                f"{name}: {plan[name].method} baked into a dense weight (no sparse / factorised kernel)"
            )
    return notes


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
