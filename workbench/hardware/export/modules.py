"""Export twins: each fake-quant layer of a plan's simulation rebuilt from the operators of :mod:`.ops`, which
:func:`torch.onnx.export` writes as ONNX nodes.

- the input quantizer: static per-tensor / per-channel integer grids become QuantizeLinear / DequantizeLinear
  with the simulation's scales and zero points (:class:`QdqAct`); 16-bit float activations a Cast round trip
  (:class:`CastAct`); float activations nothing;
- the weight: the simulation's integer codes (:func:`workbench.hardware.kernels.codes.weight_codes`, checked to
  rebuild its weights bit for bit) as an int8 / uint8 initializer and a DequantizeLinear per tensor, per output
  channel (axis 0) or per group (blocked, axis 1) (:class:`DqWeight`); a weight-only Linear (float activations)
  as one com.microsoft MatMulNBits on 4- or 8-bit packed codes (:class:`NBitsLinear`); float, bf16-rounded and
  low-rank weights as the dense float32 weight the simulation uses, with a note.

What no ONNX operator computes as simulated (activation ranges recomputed per batch, per-sample grids, an
Embedding's ``max_norm``) is an :class:`ExportProblem` naming the layer; never a silent change of numerics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from workbench.hardware.export import ops
from workbench.hardware.kernels.codes import WeightCodes, weight_codes

_CONTAINERS = (torch.uint8, torch.int8, torch.uint16, torch.int16)
NBITS_BLOCKS = (128, 64, 32, 16)
"""Block sizes MatMulNBits takes (powers of two >= 16), largest first."""


@dataclass(frozen=True)
class LayerExport:
    """How one layer is written: ``activations`` (float, cast, qdq uint8 / int8 ...) and ``weights`` (float,
    dq int8 per channel, matmul_nbits 4-bit block 32, ...), and a note on anything worth knowing."""

    layer: str
    kind: str
    activations: str
    weights: str
    note: str = ""


def container(qmin: float, qmax: float) -> torch.dtype | None:
    """The narrowest ONNX integer type holding the grid ``[qmin, qmax]`` (None: none does)."""
    for dtype in _CONTAINERS:
        info = torch.iinfo(dtype)
        if qmin >= info.min and qmax <= info.max:
            return dtype
    return None


def act_problem(a_quant: nn.Module) -> str | None:
    """Why the input quantizer ``a_quant`` has no ONNX form computing as simulated (None: it has one)."""
    spec = getattr(a_quant, "spec", None)
    if spec is None or not a_quant.enabled or a_quant.is_float:
        return None
    if spec.a_dynamic:
        return (
            f"dynamic activation ranges ({spec.a_granularity}, recomputed from every batch by the "
            f"{spec.a_observer} observer): ONNX quantizes on fixed scales; use a static range (a_dynamic=False)"
        )
    if spec.a_granularity not in ("per_tensor", "per_channel"):
        return f"activation granularity {spec.a_granularity!r} has no ONNX QuantizeLinear form"
    if container(float(a_quant.qmin.min()), float(a_quant.qmax.max())) is None:
        return f"activation grid [{float(a_quant.qmin)}, {float(a_quant.qmax)}] fits no ONNX integer type"
    return None


class CastAct(nn.Module):
    """A float16 / bfloat16 round trip of the input (a 16-bit float activation spec)."""

    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.fmt = fmt

    def forward(self, x: Tensor) -> Tensor:
        return ops.cast_act(x, self.fmt)


class QdqAct(nn.Module):
    """The static input grid of a fake-quant layer as QuantizeLinear / DequantizeLinear (see :mod:`.ops`)."""

    def __init__(self, a_quant: nn.Module) -> None:
        super().__init__()
        qmin, qmax = float(a_quant.qmin.min()), float(a_quant.qmax.max())
        dtype = container(qmin, qmax)
        scale = a_quant.scale.detach().float().reshape(-1)
        zp = a_quant.zero_point.detach().float().reshape(-1)
        if scale.numel() == 1:
            scale, zp = scale.reshape(()), zp.reshape(())
        info = torch.iinfo(dtype)
        self.clamp = (qmin, qmax) != (info.min, info.max)
        self.axis = 1
        self.dtype_name = str(dtype).removeprefix("torch.")
        self.register_buffer("scale", scale.clone())
        self.register_buffer("zero_point", zp.round().to(dtype))
        self.register_buffer("lo", ((qmin - zp) * scale).clone())
        self.register_buffer("hi", ((qmax - zp) * scale).clone())

    def forward(self, x: Tensor) -> Tensor:
        return ops.quant_act(x, self.scale, self.zero_point, self.lo, self.hi, self.axis, self.clamp)


def export_act(a_quant: nn.Module) -> tuple[nn.Module, str]:
    """The export twin of a layer's input quantizer and its description (call :func:`act_problem` first)."""
    if getattr(a_quant, "spec", None) is None or not a_quant.enabled:
        return nn.Identity(), "float"
    if a_quant.is_float:
        return CastAct(a_quant.spec.float16_format), a_quant.spec.float16_format
    act = QdqAct(a_quant)
    grain = "per channel" if act.scale.dim() else "per tensor"
    return act, f"qdq {act.dtype_name} {grain}" + (" (clamped to the grid)" if act.clamp else "")


class DqWeight(nn.Module):
    """A weight as integer codes and a DequantizeLinear: per tensor or per row on the weight's own shape (axis
    0; a Conv's DequantizeLinear feeds it directly), per group on ``[rows, fan_in]`` blocks then reshaped."""

    def __init__(self, codes: WeightCodes, shape: torch.Size, *, unsigned: bool = False) -> None:
        super().__init__()
        offset = 128 if unsigned and float(codes.qmin.min()) < 0 else 0
        dtype = container(float(codes.qmin.min()) + offset, float(codes.qmax.max()) + offset)
        rows, cols = codes.shape
        self.shape = tuple(shape)
        self.block = codes.group if codes.group < cols else 0
        scale, zp = codes.scale, codes.zero_point.round() + offset
        if self.block == 0:
            scale, zp = scale[:, 0], zp[:, 0]
            if bool((scale == scale[0]).all()) and bool((zp == zp[0]).all()):
                scale, zp = scale[0], zp[0]  # one scale: per tensor
        stored = (codes.codes + offset) if self.block else (codes.codes + offset).reshape(shape)
        self.register_buffer("codes", stored.to(dtype))
        self.register_buffer("scale", scale.float().contiguous())
        self.register_buffer("zero_point", zp.to(dtype).contiguous())

    def describe(self) -> str:
        grain = f"group {self.block}" if self.block else ("per channel" if self.scale.dim() else "per tensor")
        return f"dq {str(self.codes.dtype).removeprefix('torch.')} {grain}"

    def forward(self) -> Tensor:
        w = ops.dq_weight(self.codes, self.scale, self.zero_point, self.block)
        return w.reshape(self.shape) if self.block else w


class FloatWeight(nn.Module):
    """A dense float32 weight (float, bf16-rounded or low-rank specs: the simulation's own weight)."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().float().clone())

    def forward(self) -> Tensor:
        return self.weight


class ExportLayer(nn.Module):
    """A Conv1d / Conv2d / Linear / Embedding computing ``op(pre_op(act(x)), weight(), bias)``."""

    def __init__(self, twin: nn.Module, act: nn.Module, weight: nn.Module) -> None:
        super().__init__()
        self.act, self.weight_src = act, weight
        self.pre_op = twin.pre_op
        self.base = twin._float_like()
        self.base.register_parameter("weight", None)  # the weight comes from weight_src
        if getattr(twin, "bias", None) is not None:
            with torch.no_grad():
                self.base.bias.copy_(twin.bias.detach())

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(x)
        if self.pre_op is not None:
            x = self.pre_op(x)
        w, base = self.weight_src(), self.base
        if isinstance(base, nn.Embedding):
            return F.embedding(x, w, base.padding_idx)
        if isinstance(base, nn.Linear):
            return F.linear(x, w, base.bias)
        return base._conv_forward(x, w, base.bias)


def nbits_packing(codes: WeightCodes) -> tuple[int, int, Tensor, Tensor] | str:
    """``(bits, block, unsigned codes [rows, cols], unsigned zero points [rows, groups])`` for MatMulNBits, or
    why the codes do not fit it (a group that is not a power of two >= 16, a grid wider than 8 bits)."""
    lo, hi = float(codes.qmin.min()), float(codes.qmax.max())
    bits = 4 if hi - lo < 16 else 8
    if hi - lo >= 256:
        return f"a {hi - lo + 1:.0f}-level weight grid is wider than MatMulNBits' 8 bits"
    offset = 2 ** (bits - 1) if lo < 0 else 0
    unsigned, zp = codes.codes + offset, codes.zero_point.round().to(torch.int64) + offset
    if (
        int(unsigned.min()) < 0
        or int(unsigned.max()) >= 2**bits
        or int(zp.min()) < 0
        or int(zp.max()) >= 2**bits
    ):
        return f"codes do not fit unsigned {bits}-bit storage"
    rows, cols = codes.shape
    if codes.group < cols:
        if codes.group not in NBITS_BLOCKS:
            return f"group size {codes.group} is not one MatMulNBits takes {NBITS_BLOCKS}"
        return bits, codes.group, unsigned, zp
    block = next((b for b in NBITS_BLOCKS if cols % b == 0), 32)
    return bits, block, unsigned, zp.expand(rows, -(-cols // block))


def _pack(values: Tensor, bits: int, width: int) -> Tensor:
    """Rows of small unsigned ints packed ``8 // bits`` a byte, low bits first, each row zero-padded to
    ``width`` values."""
    rows = values.shape[0]
    padded = torch.zeros(rows, width, dtype=torch.int64)
    padded[:, : values.shape[1]] = values
    per_byte = 8 // bits
    shifts = torch.arange(per_byte) * bits
    return (padded.reshape(rows, -1, per_byte) << shifts).sum(-1).to(torch.uint8)


class NBitsLinear(nn.Module):
    """A Linear with 4- or 8-bit integer weights and float inputs as one com.microsoft MatMulNBits."""

    def __init__(self, twin: nn.Module, act: nn.Module, packing: tuple, *, accuracy: int = 0) -> None:
        super().__init__()
        bits, block, unsigned, zp = packing
        rows, cols = unsigned.shape
        blocks = -(-cols // block)
        self.act, self.k, self.n, self.bits, self.block, self.accuracy = (
            act,
            cols,
            rows,
            bits,
            block,
            accuracy,
        )
        packed = _pack(unsigned, bits, blocks * block).reshape(rows, blocks, block * bits // 8)
        zp_width = -(-blocks // (8 // bits)) * (8 // bits)
        scales = weight_codes(twin).scale
        scales = scales.expand(rows, blocks) if scales.shape[1] == 1 else scales
        self.register_buffer("packed", packed)
        self.register_buffer("scales", scales.float().reshape(-1).contiguous())
        self.register_buffer("zero_points", _pack(zp, bits, zp_width).reshape(-1))
        bias = twin.bias.detach().clone() if twin.bias is not None else None
        self.register_buffer("bias", bias)

    def describe(self) -> str:
        return f"matmul_nbits {self.bits}-bit block {self.block}"

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(x)
        y = ops.matmul_nbits(
            x,
            self.packed,
            self.scales,
            self.zero_points,
            self.k,
            self.n,
            self.bits,
            self.block,
            self.accuracy,
        )
        return y if self.bias is None else y + self.bias
