"""FX graph passes of the torch.ao int8 handler: observer pinning, float operands, clamps, float outputs.

The passes :func:`workbench.hardware.deploy.fx_int8.convert_fx_int8` runs on the prepared / converted graph so that
it computes what the simulation computes (see :mod:`workbench.hardware.deploy.convert`).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import nn

from workbench.hardware.deploy.numerics import clamp_codes
from workbench.quant.swap import set_module


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


def as_float(x: Any) -> Any:
    """``x`` dequantized when it is a quantized tensor (anything else unchanged)."""
    return x.dequantize() if isinstance(x, torch.Tensor) and x.is_quantized else x


_FLOAT_OPS = (operator.add, operator.mul, operator.sub, torch.add, torch.mul, torch.sub, torch.cat)


def float_operands(converted: torch.fx.GraphModule) -> int:
    """Make the element-wise ops that run in float (residual adds, products, concatenations) dequantize a
    quantized operand: a functional ReLU6 / hardtanh after an int8 layer keeps its quantized output, which a
    float add could not take. Returns how many operands were wrapped."""
    wrapped = 0
    for node in list(converted.graph.nodes):
        if node.op != "call_function" or node.target not in _FLOAT_OPS:
            continue
        args = node.args[0] if node.target is torch.cat else node.args
        new_args = []
        for a in args:
            if isinstance(a, torch.fx.Node):
                with converted.graph.inserting_before(node):
                    a = converted.graph.call_function(as_float, (a,))
                wrapped += 1
            new_args.append(a)
        node.args = (new_args, *node.args[1:]) if node.target is torch.cat else tuple(new_args)
    converted.graph.lint()
    converted.recompile()
    return wrapped


def clamp_layer_inputs(converted: torch.fx.GraphModule, ranges: dict[str, tuple[float, float]]) -> None:
    """Clamp the quantized input of each integer layer of ``ranges`` to its grid's range (``torch.clamp`` on
    the codes, no requantization): the quint8 container would otherwise hold codes past a 7-bit or low-bit
    grid's end, which the simulation clamps (and which would saturate the 16-bit pair sums of non-VNNI CPUs)."""
    for node in list(converted.graph.nodes):
        if node.op != "call_module" or str(node.target) not in ranges:
            continue
        lo, hi = ranges[str(node.target)]
        with converted.graph.inserting_before(node):
            clamped = converted.graph.call_function(clamp_codes, (node.args[0], lo, hi))
        node.args = (clamped, *node.args[1:])
    converted.graph.lint()
    converted.recompile()


# ops through which a quantized tensor reaches the next layer unchanged, or changed exactly as its codes are
# (monotone clamps, max pooling, zero padding: 0.0 is a code), so that the next layer's input grid may be its own
_PASS_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.MaxPool1d, nn.MaxPool2d, nn.Identity, nn.Dropout, nn.Flatten,
    nn.ZeroPad2d, nn.ConstantPad2d,
)  # fmt: skip
_PASS_CALLS = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "max_pool2d", "flatten", "dropout", "pad"}
_PASS_METHODS = {"relu", "relu_", "flatten", "view", "reshape", "contiguous", "clamp"}
_SHAPE_METHODS = {"size", "dim"}


def _passes(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    from torch.ao.quantization.observer import ObserverBase

    if node.op == "call_module":
        mod = modules[str(node.target)]
        return isinstance(mod, (*_PASS_MODULES, ObserverBase))
    if node.op == "call_function":
        if getattr(node.target, "__name__", "") == "pad" and node.kwargs.get("value", 0.0) not in (0, 0.0):
            return False
        return getattr(node.target, "__name__", "") in _PASS_CALLS or node.target is channels_last
    return node.op == "call_method" and node.target in _PASS_METHODS


def _layer_consumers(node: torch.fx.Node, modules: dict[str, nn.Module], layers: set[str]) -> set[str]:
    """The integer layers that ``node``'s value reaches through pass-through ops only (empty when it reaches
    anything else: an add, a float op, the output)."""
    out: set[str] = set()
    todo = list(node.users)
    seen: set[torch.fx.Node] = set()
    while todo:
        user = todo.pop()
        if user in seen:
            continue
        seen.add(user)
        if user.op == "call_module" and str(user.target) in layers:
            out.add(str(user.target))
        elif user.op == "call_method" and user.target in _SHAPE_METHODS:
            continue
        elif _passes(user, modules):
            todo.extend(user.users)
        else:
            return set()
    return out


def _pinned_qparams(scale: float, zero_point: int):
    def calculate_qparams() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor([scale]), torch.tensor([zero_point], dtype=torch.int32)

    return calculate_qparams


def pin_observers(prepared: torch.fx.GraphModule, grids: dict[str, tuple[float, int]]) -> int:
    """Give every observer whose tensor reaches only integer layers (through pass-through ops) those layers'
    input grid from the simulation (``grids``: layer -> (scale, zero point)); returns how many were pinned.
    Observers reaching layers with different grids, or anything else, keep their calibrated range."""
    from torch.ao.quantization.observer import ObserverBase

    modules = dict(prepared.named_modules(remove_duplicate=False))  # FX shares one observer under two names
    found: dict[int, set[tuple[float, int] | None]] = {}  # per observer instance: the grids its uses reach
    observers: dict[int, Any] = {}
    for node in prepared.graph.nodes:
        obs = modules.get(str(node.target)) if node.op == "call_module" else None
        if not isinstance(obs, ObserverBase):
            continue
        consumers = _layer_consumers(node, modules, set(grids))
        reach = {grids[c] for c in consumers} if consumers else {None}
        found.setdefault(id(obs), set()).update(reach if len(reach) == 1 else {None})
        observers[id(obs)] = obs
    pinned = 0
    for key, reach in found.items():  # a shared observer (an op sharing its input's qparams) pins only when
        if len(reach) == 1 and None not in reach:  # every use reaches the same grid
            observers[key].calculate_qparams = _pinned_qparams(*reach.pop())
            pinned += 1
    return pinned


class Int8FloatOutput(nn.Module):
    """An int8 Linear or 1x1 convolution whose output stays float32: its int32 sums are dequantized with the bias
    added, not requantized to 8 bits, as the simulation computes a layer whose output feeds a float op (a
    residual add, the logits). Takes the quantized input the layer took (its grid), gives float."""

    kernel = "torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32"

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        weight, bias = layer._weight_bias()
        self.conv = weight.dim() == 4
        self.weight_shape = tuple(weight.shape)
        self.packed = torch.ops.quantized.linear_prepack(weight.reshape(weight.shape[0], -1), bias)

    def _weight_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The int8 weight (in the layer's shape) and float bias, as torch.ao quantized layers give them."""
        weight, bias = torch.ops.quantized.linear_unpack(self.packed)
        return weight.reshape(self.weight_shape), bias

    def forward(self, qx: torch.Tensor) -> torch.Tensor:
        x = qx.dequantize()
        if self.conv:  # channels-last NCHW is NHWC in memory: the permuted view is contiguous
            x = x.permute(0, 2, 3, 1)
        y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            x, qx.q_scale(), qx.q_zero_point(), self.packed
        )
        return y.permute(0, 3, 1, 2) if self.conv else y


FLOAT_OUTPUT_ENGINES = (
    "x86",
    "fbgemm",
)  # the engines whose packed Linear weights have a float32-output kernel


def _float_output_capable(mod: nn.Module) -> bool:
    import torch.ao.nn.quantized as nnq

    if type(mod) is nnq.Linear:
        return True
    return type(mod) is nnq.Conv2d and (
        tuple(mod.kernel_size) == (1, 1) and tuple(mod.stride) == (1, 1) and tuple(mod.padding) == (0, 0)
        and mod.groups == 1 and tuple(mod.dilation) == (1, 1)
    )  # fmt: skip


def float_outputs(converted: torch.fx.GraphModule) -> list[str]:
    """Give every int8 Linear / 1x1 convolution whose output is only dequantized a float32 output
    (:class:`Int8FloatOutput`), so no 8-bit requantization the simulation lacks sits there; returns their names."""
    modules = dict(converted.named_modules(remove_duplicate=False))
    calls = [str(n.target) for n in converted.graph.nodes if n.op == "call_module"]
    done = []
    for node in list(converted.graph.nodes):
        target = str(node.target)
        if node.op != "call_module" or calls.count(target) > 1 or not _float_output_capable(modules[target]):
            continue
        users = list(node.users)
        if not users or any(u.op != "call_method" or u.target != "dequantize" for u in users):
            continue
        set_module(converted, target, Int8FloatOutput(modules[target]))
        for user in users:
            user.replace_all_uses_with(node)
            converted.graph.erase_node(user)
        done.append(target)
    converted.graph.lint()
    converted.recompile()
    return done
