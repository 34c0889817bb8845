"""The int8 dynamic Linear handler (torch.ao ``quantized::linear_dynamic``) on the simulation's weight codes.

The kernel picks each batch's activation grid itself (asymmetric uint8 over the batch's range, on 7 bits on the
x86 / fbgemm engines: ``reduce_range``), so it matches a simulated 8-bit dynamic per-tensor range up to that grid;
the weights are the simulation's int8 codes and scales exactly.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from workbench.hardware.kernels.codes import integer_weight_problem, weight_codes
from workbench.hardware.kernels.registry import register_kernel
from workbench.quant.spec import QuantSpec


def int8_dynamic_linear(twin: nn.Module, spec: QuantSpec | None) -> nn.Module:
    """A ``torch.ao.nn.quantized.dynamic.Linear`` carrying ``twin``'s codes and per-channel scales."""
    import torch.ao.nn.quantized.dynamic as nnqd

    codes = weight_codes(twin)
    if isinstance(codes, str):
        raise ValueError(f"int8 dynamic kernel cannot bake this layer: {codes}")
    rows, cols = codes.shape
    scale = codes.scale[:, 0].double()
    with warnings.catch_warnings():  # torch's notice that quantized tensors are deprecated
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        qw = torch.quantize_per_channel(
            codes.centred().float() * scale[:, None].float(), scale, torch.zeros(rows, dtype=torch.long), 0,
            torch.qint8,
        )  # fmt: skip
        mod = nnqd.Linear(cols, rows, bias_=twin.bias is not None, dtype=torch.qint8)
        mod.set_weight_bias(qw, None if twin.bias is None else twin.bias.detach().float())
    return mod


@register_kernel(
    "int8_dynamic",
    kind="linear",
    precision="int8",
    weight_only=False,
    order=40,
    build=int8_dynamic_linear,
    summary="torch.ao quantized::linear_dynamic: the simulation's int8 weight codes, each batch's input range "
    "chosen by the kernel (7-bit reduce_range on x86)",
)
def int8_dynamic_problem(layer: nn.Module, spec: QuantSpec | None) -> str | None:
    problem = integer_weight_problem(spec)
    if problem is not None:
        return problem
    if not spec.a_dynamic or spec.a_bits != 8 or spec.a_granularity != "per_tensor":
        return "not an 8-bit dynamic per-tensor activation spec (a_dynamic=True, a_bits=8)"
    if spec.granularity == "per_group" or not spec.w_symmetric:
        return "per-group or asymmetric weights (the kernel takes symmetric per-channel int8 weights)"
    return None
