"""Which kernel each layer of a plan runs on when deployed (:func:`deployed_kernels`, :func:`kernel_of_module`)
and how the layers connect (:func:`layer_links`): what the latency estimator of
:mod:`workbench.hardware.layer_costs` prices."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn

from workbench.hardware.deploy.convert import (
    DEFAULT_PROFILE,
    EXECUTABLE,
    _exact_dispatch,
    _kernel_module,
    _tables_weight_only,
)
from workbench.hardware.deploy.fx_graph import Int8FloatOutput
from workbench.hardware.dispatch import PASSTHROUGH_TYPES, dispatch_plan
from workbench.hardware.kernels import (
    Bf16Layer,
    Int4WeightOnlyLinear,
    Int8WeightOnlyLinear,
    PackedEmbedding,
    choose_kernel,
)
from workbench.hardware.profile import INT_PRECISION_BITS, load_profile
from workbench.quant.fusion import trace_layers
from workbench.quant.spec import QuantPlan

_MODULE_KERNELS = ((Bf16Layer, "bf16"), (Int8WeightOnlyLinear, "int8_weight_only"),
                   (Int4WeightOnlyLinear, "int4_weight_only"), (PackedEmbedding, "packed_lookup"))  # fmt: skip
_PASS_FUNCTIONS = (torch.flatten, torch.relu, nn.functional.relu, nn.functional.relu6)
_PASS_METHODS = ("flatten", "view", "reshape", "relu", "contiguous")


# ============================================================================================ kernels of a plan


def kernel_of_module(module: nn.Module) -> str:
    """The menu kernel a deployed layer module runs: ``int8_static`` (torch.ao quantized, float-output int8
    included), ``bf16``, the weight-only / packed modules, ``fallback`` (a fake-quant twin on float kernels) or
    ``fp32``. A layer behind its pre-op (SAME padding) is the kernel its container holds."""
    module = _kernel_module(module)
    if isinstance(module, Int8FloatOutput):
        return "int8_static"
    for cls, name in _MODULE_KERNELS:
        if isinstance(module, cls):
            return name
    if type(module).__module__.startswith("torch.ao.nn") and ".quantized" in type(module).__module__:
        return "int8_static"
    return "fallback" if any(hasattr(m, "w_quant") for m in module.modules()) else "fp32"


def deployed_kernels(model: nn.Module, plan: QuantPlan) -> dict[str, str]:
    """Layer -> the kernel :func:`~workbench.hardware.deploy.deploy` runs it on under ``plan`` (CPU, kernel
    menu on): its dispatch on the measured CPU profile, the exact-int8 check, the menu's choice for weight-only
    layers (:func:`~workbench.hardware.kernels.choose_kernel`) and the bf16 swap, in deploy's order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        disp = dispatch_plan(model, plan, load_profile(DEFAULT_PROFILE), executable=list(EXECUTABLE))
    disp, _ = _exact_dispatch(plan, _tables_weight_only(model, plan, disp))
    modules = dict(model.named_modules())
    out = {}
    for name, d in disp.items():
        twin = name in plan and d.requested in INT_PRECISION_BITS  # deploy keeps its fake-quant twin
        kernel = "int8_static" if d.is_int else "fallback" if twin else "fp32"  # else: weights baked in float
        if d.weight_only and name in plan:
            choice = choose_kernel(name, modules[name], plan.get(name))
            kernel = choice.name if choice.handler is not None else kernel
        if d.precision == "bf16" and kernel in ("fp32", "fallback"):
            kernel = "bf16"
        out[name] = kernel
    return out


# ============================================================================================ graph links


def layer_links(model: nn.Module, layers: list[str]) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """What feeds each layer (a layer's name, or ``@node`` for any other op / the input) and what its output
    reaches (layers, or ``@node``), looking through pass-through ops (ReLU, pooling, BatchNorm, flatten) that
    stay in an int8 region. A model torch.fx cannot trace is taken as the chain of its layers in order."""
    try:
        gm = trace_layers(model)
    except Exception:  # noqa: BLE001 - untraceable: layers in execution order
        sources = {n: (layers[i - 1] if i else "@input") for i, n in enumerate(layers)}
        return sources, {
            n: (layers[i + 1] if i + 1 < len(layers) else "@output",) for i, n in enumerate(layers)
        }
    modules = dict(model.named_modules())
    wanted = set(layers)

    def passes(node: torch.fx.Node) -> bool:
        if node.op == "call_module":
            return str(node.target) not in wanted and isinstance(
                modules.get(str(node.target)), PASSTHROUGH_TYPES
            )
        return (node.op == "call_function" and node.target in _PASS_FUNCTIONS) or (
            node.op == "call_method" and node.target in _PASS_METHODS
        )

    def name_of(node: torch.fx.Node) -> str:
        return (
            str(node.target) if node.op == "call_module" and str(node.target) in wanted else f"@{node.name}"
        )

    sources, sinks = {}, {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or str(node.target) not in wanted:
            continue
        src = node.all_input_nodes[0] if node.all_input_nodes else node
        while src is not node and passes(src) and len(src.all_input_nodes) == 1:
            src = src.all_input_nodes[0]
        sources[str(node.target)] = name_of(src) if src is not node else "@input"
        sinks[str(node.target)] = tuple(dict.fromkeys(_reached(node, passes, name_of)))
    return sources, sinks


def _reached(node: torch.fx.Node, passes: Callable, name_of: Callable) -> Iterator[str]:
    for user in node.users:
        if passes(user):
            yield from _reached(user, passes, name_of)
        else:
            yield name_of(user)
