"""The Embedding menu: a float32 table, or a packed weight-only lookup on the simulation's own codes."""

from __future__ import annotations

from torch import nn

from workbench.hardware.kernels.codes import integer_weight_problem, weight_codes
from workbench.hardware.kernels.modules import PackedEmbedding
from workbench.hardware.kernels.registry import register_kernel
from workbench.quant.spec import QuantSpec


def _float_table(twin: nn.Module, spec: QuantSpec | None) -> nn.Module:
    return twin.to_float() if hasattr(twin, "to_float") else twin


@register_kernel(
    "fp32",
    kind="embedding",
    precision="fp32",
    weight_only=False,
    order=0,
    build=_float_table,
    summary="float32 table (float specs and tables not in the plan)",
)
def float_table_problem(layer: nn.Module, spec: QuantSpec | None) -> str | None:
    if spec is None or spec.w_bits == 32:
        return None
    return f"the plan quantizes it (w_bits={spec.w_bits})"


@register_kernel(
    "packed_lookup",
    kind="embedding",
    precision="int8",
    weight_only=True,
    order=10,
    build=lambda twin, spec: PackedEmbedding(weight_codes(twin), twin.padding_idx),
    summary="uint8 codes (4-bit nibbles at <= 4 bits) with a scale and offset per (row, group); a lookup "
    "rebuilds the simulated rows exactly",
)
def packed_problem(layer: nn.Module, spec: QuantSpec | None) -> str | None:
    problem = integer_weight_problem(spec)
    if problem is not None:
        return problem
    if getattr(layer, "max_norm", None) is not None:
        return "max_norm renormalises looked-up rows (the packed lookup does not)"
    if hasattr(layer, "w_quant"):
        codes = weight_codes(layer)
        return codes if isinstance(codes, str) else None
    return None
