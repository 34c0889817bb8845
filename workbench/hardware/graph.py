"""The model as a graph of cost nodes (layers, elementwise ops, free ops), traced once with torch.fx."""

from __future__ import annotations

import inspect
import math
import operator
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.devices import model_device
from workbench.quant.fusion import trace_layers
from workbench.quant.inputs import move_inputs, take_inputs
from workbench.quant.introspect import is_quantizable

_FREE_FUNCS = {
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.transpose,
    torch.permute,
    operator.getitem,
    getattr,
}
_FREE_METHODS = {
    "view",
    "reshape",
    "flatten",
    "size",
    "squeeze",
    "unsqueeze",
    "permute",
    "transpose",
    "contiguous",
    "dim",
}
_FREE_MODULES = (nn.Flatten, nn.Identity, nn.Dropout, nn.Unflatten)
_RELUS = (nn.ReLU, nn.ReLU6)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass
class _Node:
    name: str
    kind: str  # "input", "layer", "elementwise", "relu", "bn", "free", "output"
    owner: str
    elements: int  # output elements per sample
    in_elements: int
    inputs: list[str]
    layer: str | None = None
    target: str = ""  # module path of call_module nodes


def _numel(meta: Any) -> int:
    tm = meta.get("tensor_meta") if isinstance(meta, dict) else None
    if tm is None:
        return 0
    if hasattr(tm, "shape"):
        shape = tuple(tm.shape)
        return int(math.prod(shape[1:])) if len(shape) > 1 else int(math.prod(shape))
    if isinstance(tm, (tuple, list)):
        return sum(int(math.prod(t.shape[1:])) for t in tm if hasattr(t, "shape"))
    return 0


def _positional(gm: torch.fx.GraphModule, x: Any) -> tuple[Any, ...]:
    """``x`` (a tensor, tuple or dict of inputs) as the positional arguments of the traced forward."""
    if isinstance(x, dict):
        bound = inspect.signature(gm.forward).bind(**x)
        bound.apply_defaults()
        return tuple(bound.args)
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def trace_graph(model: nn.Module, example_input: Any) -> list[_Node] | None:
    """The model's dataflow at the granularity the estimator needs, or None when torch.fx cannot trace it.

    ``example_input``: a tensor, a tuple or a dict of tensors (keyword arguments of the forward)."""
    from torch.fx.passes.shape_prop import ShapeProp

    modes = {m: m.training for m in model.modules()}  # each module's own flag, restored exactly
    try:
        gm = trace_layers(model)
        gm.eval()
        with torch.no_grad():
            # on the model's device: a mismatch would fail here and silently drop the graph
            x = move_inputs(take_inputs(example_input, 1), model_device(model))
            ShapeProp(gm).propagate(*_positional(gm, x))
    except Exception as e:  # noqa: BLE001 - any tracing failure falls back to a layer-only estimate
        warnings.warn(
            f"cost estimate without elementwise ops and conversions: torch.fx cannot trace the model ({e})",
            stacklevel=3,
        )
        return None
    finally:
        for m, mode in modes.items():
            m.training = mode
    modules = dict(model.named_modules())
    nodes: list[_Node] = []
    for n in gm.graph.nodes:
        inputs = [a.name for a in n.all_input_nodes]
        elements = _numel(n.meta)
        in_el = sum(_numel(a.meta) for a in n.all_input_nodes)
        stack = list(n.meta.get("nn_module_stack", {}).keys())
        if n.op == "placeholder":
            nodes.append(_Node(n.name, "input", "", elements, 0, []))
            continue
        if n.op == "output":
            nodes.append(_Node(n.name, "output", "", 0, in_el, inputs))
            continue
        if n.op == "get_attr":
            nodes.append(_Node(n.name, "free", "", 0, 0, []))
            continue
        if n.op == "call_module":
            target = str(n.target)
            mod = modules[target]
            owner = target.rsplit(".", 1)[0] if "." in target else ""
            if is_quantizable(mod):
                kind = "layer"
            elif isinstance(mod, _FREE_MODULES):
                kind = "free"
            elif isinstance(mod, _RELUS):
                kind = "relu"
            elif isinstance(mod, nn.BatchNorm2d):
                kind = "bn"
            elif isinstance(mod, _POOLS):
                kind = "elementwise"
            else:
                kind = "elementwise"
            nodes.append(
                _Node(
                    n.name, kind, owner, elements, in_el, inputs, target if kind == "layer" else None, target
                )
            )
            continue
        owner = stack[-1] if stack else ""
        if (
            n.op == "call_function"
            and (n.target in _FREE_FUNCS)
            or n.op == "call_method"
            and n.target in _FREE_METHODS
        ):
            kind = "free"
        elif n.target in (torch.relu, nn.functional.relu) or n.target == "relu":
            kind = "relu"
        else:
            kind = "elementwise"
        nodes.append(_Node(n.name, kind, owner, elements, in_el, inputs))
    return nodes
