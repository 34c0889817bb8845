"""The three operators an exported plan is written in: torch custom ops that run the simulation's numerics in
torch and translate to ONNX nodes (``torch.onnx.export(..., dynamo=True, custom_translation_table=...)``).

==================  ==================================================  =============================================
torch op            computes (as the fake-quant simulation)             ONNX
==================  ==================================================  =============================================
``quant_act``       ``(clamp(round(x / s) + z, qmin, qmax) - z) * s``   [Max, Min] QuantizeLinear DequantizeLinear
``cast_act``        a bfloat16 / float16 round trip                     Cast Cast
``dq_weight``       ``(codes - z) * s`` per tensor / row / (row, group) DequantizeLinear (axis 0, or blocked axis 1)
``matmul_nbits``    ``x @ ((u - zu) * s).T``, codes u packed n-bit      com.microsoft MatMulNBits
==================  ==================================================  =============================================

Activation codes live in an int8 / uint8 / int16 / uint16 container (``zero_point``'s dtype): the grid's own
bounds, where narrower than the container (4-bit activations 0..15, narrow-range -127..127), are kept by clamping
the input to ``[(qmin - z) * s, (qmax - z) * s]`` first (``lo`` / ``hi``), which rounds to the same codes. The
eager implementations are what :func:`torch.export` never runs but the tests do: the export model in torch must
give the simulation's outputs before ONNX Runtime is asked to.
"""

from __future__ import annotations

import torch
from onnx.defs import OpSchema
from onnxscript import opset21 as op
from onnxscript.values import Op, Opset
from torch import Tensor

MSFT = Opset("com.microsoft", 1)


def _matmul_nbits_schema() -> OpSchema:
    """ONNX Runtime's contrib op MatMulNBits as an (unregistered) schema, so that onnxscript can call it."""
    param = OpSchema.FormalParameter
    optional = OpSchema.FormalParameterOption.Optional
    return OpSchema(
        "MatMulNBits",
        MSFT.domain,
        1,
        inputs=[
            param("A", "T1"),
            param("B", "T2"),
            param("scales", "T1"),
            param("zero_points", "T2", param_option=optional),
        ],
        outputs=[param("Y", "T1")],
        type_constraints=[("T1", ["tensor(float)"], ""), ("T2", ["tensor(uint8)"], "")],
        attributes=[
            OpSchema.Attribute(name, OpSchema.AttrType.INT, "", required=True)
            for name in ("K", "N", "bits", "block_size", "accuracy_level")
        ],
    )


MATMUL_NBITS = Op(MSFT, "MatMulNBits", _matmul_nbits_schema())
_CASTS = {"bfloat16": (torch.bfloat16, 16), "float16": (torch.float16, 10)}  # torch dtype, ONNX TensorProto


def _per_axis(t: Tensor, x: Tensor, axis: int) -> Tensor:
    """A 1-D per-channel parameter shaped to broadcast along ``axis`` of ``x`` (one value: a scalar)."""
    if t.numel() == 1:
        return t.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


@torch.library.custom_op("workbench_onnx::quant_act", mutates_args=())
def quant_act(
    x: Tensor, scale: Tensor, zero_point: Tensor, lo: Tensor, hi: Tensor, axis: int, clamp: bool
) -> Tensor:
    s, z = _per_axis(scale, x, axis), _per_axis(zero_point.float(), x, axis)
    if clamp:
        x = torch.minimum(torch.maximum(x, _per_axis(lo, x, axis)), _per_axis(hi, x, axis))
    info = torch.iinfo(zero_point.dtype)
    q = torch.clamp(torch.round(x / s) + z, info.min, info.max)
    return (q - z) * s


@quant_act.register_fake
def _(x, scale, zero_point, lo, hi, axis, clamp):
    return torch.empty_like(x)


def quant_act_onnx(x, scale, zero_point, lo, hi, axis: int, clamp: bool):
    if clamp:
        x = op.Min(op.Max(x, lo), hi)
    return op.DequantizeLinear(
        op.QuantizeLinear(x, scale, zero_point, axis=axis), scale, zero_point, axis=axis
    )


@torch.library.custom_op("workbench_onnx::cast_act", mutates_args=())
def cast_act(x: Tensor, fmt: str) -> Tensor:
    return x.to(_CASTS[fmt][0]).to(x.dtype)


@cast_act.register_fake
def _(x, fmt):
    return torch.empty_like(x)


def cast_act_onnx(x, fmt: str):
    return op.Cast(op.Cast(x, to=_CASTS[fmt][1]), to=1)


@torch.library.custom_op("workbench_onnx::dq_weight", mutates_args=())
def dq_weight(codes: Tensor, scale: Tensor, zero_point: Tensor, block: int) -> Tensor:
    """``codes [rows, cols]`` with ``scale`` / ``zero_point`` of shape ``[]`` (per tensor), ``[rows]`` (per row) or
    ``[rows, groups]`` (blocks of ``block`` columns)."""
    s, z = scale, zero_point.float()
    if s.dim() == 1:
        shape = (-1,) + (1,) * (codes.dim() - 1)
        s, z = s.reshape(shape), z.reshape(shape)
    elif s.dim() == 2:
        cols = codes.shape[1]
        s, z = (t.repeat_interleave(block, dim=1)[:, :cols] for t in (s, z))
    return (codes.float() - z) * s


@dq_weight.register_fake
def _(codes, scale, zero_point, block):
    return torch.empty(codes.shape, dtype=torch.float32, device=codes.device)


def dq_weight_onnx(codes, scale, zero_point, block: int):
    if block > 0:
        return op.DequantizeLinear(codes, scale, zero_point, axis=1, block_size=block)
    return op.DequantizeLinear(codes, scale, zero_point, axis=0)


@torch.library.custom_op("workbench_onnx::matmul_nbits", mutates_args=())
def matmul_nbits(
    x: Tensor,
    packed: Tensor,
    scales: Tensor,
    zero_points: Tensor,
    k: int,
    n: int,
    bits: int,
    block: int,
    accuracy: int,
) -> Tensor:
    """``x [..., k] @ W.T`` for ``W [n, k]`` stored as MatMulNBits stores it: unsigned ``bits``-wide codes packed
    little-end first into bytes, ``[n, blocks, block * bits / 8]``; ``scales [n * blocks]``; zero points one per
    (row, block), packed the same way, each row padded to whole bytes."""
    blocks = packed.shape[1]
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, device=packed.device) * bits
    codes = ((packed.reshape(n, -1, 1).to(torch.int32) >> shifts) & (2**bits - 1)).reshape(n, -1)
    zp_row = -(-blocks // per_byte)
    zps = ((zero_points.reshape(n, zp_row, 1).to(torch.int32) >> shifts) & (2**bits - 1)).reshape(n, -1)
    zps = zps[:, :blocks].repeat_interleave(block, dim=1)
    w = (codes.float() - zps.float()) * scales.reshape(n, blocks).repeat_interleave(block, dim=1)
    return x @ w[:, :k].T


@matmul_nbits.register_fake
def _(x, packed, scales, zero_points, k, n, bits, block, accuracy):
    return x.new_empty((*x.shape[:-1], n))


def matmul_nbits_onnx(x, packed, scales, zero_points, k: int, n: int, bits: int, block: int, accuracy: int):
    return MATMUL_NBITS(
        x, packed, scales, zero_points, K=k, N=n, bits=bits, block_size=block, accuracy_level=accuracy
    )


TRANSLATIONS = {
    torch.ops.workbench_onnx.quant_act.default: quant_act_onnx,
    torch.ops.workbench_onnx.cast_act.default: cast_act_onnx,
    torch.ops.workbench_onnx.dq_weight.default: dq_weight_onnx,
    torch.ops.workbench_onnx.matmul_nbits.default: matmul_nbits_onnx,
}
"""torch op -> its ONNX translation, for ``torch.onnx.export(custom_translation_table=...)``."""
