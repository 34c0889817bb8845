"""The Linear and Conv menus: fp32, bf16, int8 static (torch.ao FX), int8 dynamic, int8 / int4 weight-only.

Each ``problem`` says when its kernel computes a layer differently from the plan's simulation; the weight-only
kernels bake the simulation's own codes (:func:`~workbench.hardware.kernels.codes.weight_codes`).
"""

from __future__ import annotations

from torch import nn

from workbench.hardware.kernels.codes import integer_weight_problem, weight_codes
from workbench.hardware.kernels.modules import (
    INT4_GROUPS,
    INT8_COL_MULTIPLE,
    Bf16Layer,
    Int4WeightOnlyLinear,
    Int8WeightOnlyLinear,
)
from workbench.hardware.kernels.registry import register_kernel
from workbench.quant.spec import QuantSpec


def _bits(spec: QuantSpec) -> int:
    return max(spec.channel_bits) if spec.channel_bits is not None else spec.w_bits


def _float_layer(twin: nn.Module, spec: QuantSpec | None) -> nn.Module:
    return twin.to_float() if hasattr(twin, "to_float") else twin


def _bf16_layer(twin: nn.Module, spec: QuantSpec | None) -> nn.Module:
    return Bf16Layer(_float_layer(twin, spec))


def kernel_exact_problem(spec: QuantSpec) -> str | None:
    """Why an int8 kernel cannot compute ``spec``'s layer exactly as the simulation does (None: it can)."""
    if spec.granularity == "per_group":
        return "per-group weight scales (int8 kernels take one scale per output channel)"
    if not spec.w_symmetric:
        return "asymmetric weights (int8 kernels take symmetric weights)"
    if spec.rank_ratio is not None:
        return "low-rank weights (a product of two quantized factors is not on one int8 grid)"
    if spec.a_dynamic:
        return "dynamic activation ranges (static int8 kernels take one calibrated input range)"
    if spec.a_granularity != "per_tensor":
        return f"{spec.a_granularity} activation scales (int8 kernels take one input scale)"
    return None


def _float_problem(spec: QuantSpec | None) -> str | None:
    if spec is None or (_bits(spec) == 32 and spec.a_bits == 32):
        return None
    return f"the plan quantizes it (w_bits={spec.w_bits}, a_bits={spec.a_bits})"


def _bf16_problem(spec: QuantSpec | None) -> str | None:
    if spec is not None and _bits(spec) == 16 and spec.float16_format == "bfloat16" and spec.a_bits >= 16:
        return None
    return "not a bfloat16 spec (w_bits=16, float16_format='bfloat16')"


def _static_problem(spec: QuantSpec | None) -> str | None:
    problem = integer_weight_problem(spec)
    if problem is not None:
        return problem
    if spec.a_bits > 8:
        return f"{spec.a_bits}-bit activations (static int8 quantizes the input to <= 8 bits)"
    return kernel_exact_problem(spec)


def weight_only_problem(spec: QuantSpec | None) -> str | None:
    """Why ``spec`` is not a weight-only integer spec (integer weights, float activations)."""
    problem = integer_weight_problem(spec)
    if problem is not None:
        return problem
    if spec.a_bits < 16:
        return f"{spec.a_bits}-bit activations (weight-only kernels take float activations)"
    return None


for _kind, _order in (("linear", 0), ("conv", 0)):
    register_kernel(
        "fp32", kind=_kind, precision="fp32", weight_only=False, order=_order, build=_float_layer,
        summary="float32 layer (float specs and layers not in the plan)",
    )(lambda layer, spec: _float_problem(spec))  # fmt: skip
    register_kernel(
        "bf16", kind=_kind, precision="bf16", weight_only=False, order=_order + 1, build=_bf16_layer,
        summary="bfloat16 weights and input, output cast back (w_bits=16)",
    )(lambda layer, spec: _bf16_problem(spec))  # fmt: skip
    register_kernel(
        "int8_static", kind=_kind, precision="int8", weight_only=False, order=_order + 30,
        summary="torch.ao FX int8 (quantized::linear / conv2d) on the simulation's codes and input grids; a "
        "whole-graph pass run by deploy()",
    )(lambda layer, spec: _static_problem(spec))  # fmt: skip


@register_kernel(
    "int4_weight_only",
    kind="linear",
    precision="int4",
    weight_only=True,
    order=10,
    build=lambda twin, spec: Int4WeightOnlyLinear(weight_codes(twin), twin.bias),
    summary="aten._weight_int4pack_mm_for_cpu: <= 4-bit codes, (scale, zero) per group of 32 / 64 / 128 / 256 "
    "inputs, bf16 activations",
)
def int4_problem(layer: nn.Module, spec: QuantSpec | None) -> str | None:
    problem = weight_only_problem(spec)
    if problem is not None:
        return problem
    if _bits(spec) > 4:
        return f"{_bits(spec)}-bit codes do not fit 4 bits"
    cols = layer.weight.shape[1]
    if spec.granularity == "per_group" and (spec.group_size not in INT4_GROUPS or cols % spec.group_size):
        return f"group_size={spec.group_size} on {cols} inputs (the kernel takes groups {INT4_GROUPS} dividing them)"
    if spec.granularity != "per_group" and not any(cols % g == 0 for g in INT4_GROUPS):
        return f"{cols} inputs is no multiple of {min(INT4_GROUPS)}"
    return _codes_problem(layer)


@register_kernel(
    "int8_weight_only",
    kind="linear",
    precision="int8",
    weight_only=True,
    order=20,
    build=lambda twin, spec: Int8WeightOnlyLinear(weight_codes(twin), twin.bias),
    summary="aten._weight_int8pack_mm: <= 8-bit codes with one scale per output channel, bf16 activations",
)
def int8_problem(layer: nn.Module, spec: QuantSpec | None) -> str | None:
    problem = weight_only_problem(spec)
    if problem is not None:
        return problem
    if spec.granularity == "per_group":
        return "per-group scales (the kernel takes one scale per output channel)"
    cols = layer.weight.shape[1]
    if cols % INT8_COL_MULTIPLE:
        return f"{cols} inputs is no multiple of {INT8_COL_MULTIPLE}"
    codes = weight_codes(layer) if hasattr(layer, "w_quant") else None
    if isinstance(codes, str):
        return codes
    if codes is not None and (int(codes.centred().min()) < -128 or int(codes.centred().max()) > 127):
        return "asymmetric codes minus their zero point leave the int8 range"
    return None


def _codes_problem(layer: nn.Module) -> str | None:
    """Why ``layer``'s simulated codes cannot be baked (None for a float layer: the check waits for the twin)."""
    if not hasattr(layer, "w_quant"):
        return None
    codes = weight_codes(layer)
    return codes if isinstance(codes, str) else None
