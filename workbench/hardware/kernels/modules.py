"""The deployed modules of the kernel menu: bf16 layers, int8 / int4 weight-only Linear, a packed Embedding.

The weight-only Linear kernels of this CPU (``aten._weight_int8pack_mm``, ``aten._weight_int4pack_mm_for_cpu``)
take bfloat16 activations (their float32 paths are an order of magnitude slower), so a weight-only layer runs its
input in bf16 and gives its output back in the input's dtype with the bias added in float32: the simulation's
weight codes exactly, the activations and scales at bf16 precision (cosine to the simulation >= 0.9999).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from workbench.hardware.kernels.codes import WeightCodes

INT4_GROUPS: tuple[int, ...] = (256, 128, 64, 32)
"""Group sizes the int4 weight-only CPU kernel takes (largest first: the one used for per-channel scales)."""
INT4_ROW_MULTIPLE = 16  # the int4 packer needs rows divisible by 16: other layers get zero rows added
INT8_COL_MULTIPLE = 8  # the int8 weight-only kernel needs in_features divisible by 8 (it crashes otherwise)
INT4_CENTRE = 8  # the int4 kernel computes (u - 8) * scale + zero for a code u in 0..15


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


class _WeightOnlyLinear(nn.Module):
    """Shared forward of the weight-only Linear kernels: ``[..., in]`` -> bf16 rows -> kernel -> ``[..., out]``."""

    in_features: int
    out_features: int
    bias: Tensor | None

    def _mm(self, x2: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16, memory_format=torch.contiguous_format)
        y = self._mm(rows)
        if self.bias is None:
            return y.to(x.dtype).reshape(*lead, self.out_features)
        # float32 input: one op, bf16 + float32 adds in float32 (exactly y.float() + bias)
        y = torch.add(y, self.bias) if x.dtype == torch.float32 else y.to(x.dtype) + self.bias.to(x.dtype)
        return y.reshape(*lead, self.out_features)


class Int8WeightOnlyLinear(_WeightOnlyLinear):
    """A Linear on ``aten._weight_int8pack_mm``: int8 codes with one bf16 scale per output channel."""

    kernel = "aten._weight_int8pack_mm"

    def __init__(self, codes: WeightCodes, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.register_buffer("weight_int8", codes.centred().to(torch.int8))
        self.register_buffer("scales", codes.scale[:, 0].to(torch.bfloat16).contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)

    def _mm(self, x2: Tensor) -> Tensor:
        return torch.ops.aten._weight_int8pack_mm(x2, self.weight_int8, self.scales)


def int4_group(codes: WeightCodes) -> int:
    """The int4 kernel's group size for ``codes``: their own group, or for one scale per row the largest
    supported group dividing the row (every group of a row then carries the row's scale)."""
    cols = codes.shape[1]
    if codes.group != cols:
        return codes.group
    return next(g for g in INT4_GROUPS if cols % g == 0)


class Int4WeightOnlyLinear(_WeightOnlyLinear):
    """A Linear on ``aten._weight_int4pack_mm_for_cpu``: 4-bit codes ``u`` packed two to a byte, one bf16
    (scale, zero) pair per group of input columns, weight ``(u - 8) * scale + zero``. Symmetric codes ``q`` are
    stored as ``u = q + 8`` (zero 0, exact); asymmetric ones as ``u = q - qmin`` with
    ``zero = (8 + qmin - zero_point) * scale``."""

    def __init__(self, codes: WeightCodes, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.group = int4_group(codes)
        per = self.group  # expand the (row, group) parameters to the kernel's groups
        scale = codes.expand(codes.scale)[:, ::per]
        centred = codes.centred()
        if bool((codes.zero_point == 0).all()) and int(centred.abs().max()) <= INT4_CENTRE - 1:
            u, zero = centred + INT4_CENTRE, torch.zeros_like(scale)
        else:
            qmin = codes.expand(codes.qmin)
            u = codes.codes - qmin.to(torch.int64)
            offset = INT4_CENTRE + qmin - codes.expand(codes.zero_point)
            zero = (offset * codes.expand(codes.scale))[:, ::per]
        pad = -self.out_features % INT4_ROW_MULTIPLE  # zero rows (code 8, scale 0): outputs sliced away
        u = F.pad(u, (0, 0, 0, pad), value=INT4_CENTRE)
        scale, zero = F.pad(scale, (0, 0, 0, pad)), F.pad(zero, (0, 0, 0, pad))
        sz = torch.stack([scale.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous()
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.to(torch.int32).contiguous(), 1)
        self.register_buffer("weight_int4", packed)
        self.register_buffer("scales_and_zeros", sz)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.kernel = f"aten._weight_int4pack_mm_for_cpu (group {self.group})"

    def _mm(self, x2: Tensor) -> Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x2, self.weight_int4, self.group, self.scales_and_zeros
        )
        return y[:, : self.out_features] if y.shape[1] != self.out_features else y


class PackedEmbedding(nn.Module):
    """An Embedding whose table is stored as codes ``u = q - qmin`` (uint8; two 4-bit codes to a byte when every
    code fits 4 bits and the dim is even) with float32 scales and offsets per (row, group); a lookup gathers
    the codes and rebuilds ``(u + qmin - zero_point) * scale``: the simulated table's rows, exactly."""

    kernel = "packed weight-only lookup"

    def __init__(self, codes: WeightCodes, padding_idx: int | None) -> None:
        super().__init__()
        rows, dim = codes.shape
        self.dim, self.group, self.padding_idx = dim, codes.group, padding_idx
        u = (codes.codes - codes.expand(codes.qmin).to(torch.int64)).to(torch.uint8)
        self.nibbles = bool(int(u.max()) < 16 and dim % 2 == 0)
        if self.nibbles:
            u = u[:, 0::2] | (u[:, 1::2] << 4)
        self.register_buffer("codes", u.contiguous())
        self.register_buffer("scale", codes.scale.contiguous())
        self.register_buffer("offset", (codes.qmin - codes.zero_point).contiguous())
        self.kernel = f"packed weight-only lookup ({'4-bit nibbles' if self.nibbles else 'uint8 codes'})"

    def forward(self, ids: Tensor) -> Tensor:
        u = F.embedding(ids, self.codes)
        if self.nibbles:
            u = torch.stack([u & 15, u >> 4], dim=-1).flatten(-2)
        scale = F.embedding(ids, self.scale).repeat_interleave(self.group, dim=-1)[..., : self.dim]
        offset = F.embedding(ids, self.offset).repeat_interleave(self.group, dim=-1)[..., : self.dim]
        return (u.float() + offset) * scale
