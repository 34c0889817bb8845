"""Uniform affine fake quantization: integer grids, scales and zero points, straight-through gradients.

Every function works on a 2-D *grid* view ``[rows, cols]`` whose rows share one scale: per-tensor is one row,
per-channel one row per output channel, per-group one row per (channel, group). Quantization parameters have
shape ``[rows, 1]`` and broadcast along the row. ``qmin`` / ``qmax`` may differ per row (per-channel bits).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

_FLOAT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def int_range(bits: int, *, symmetric: bool) -> tuple[int, int]:
    """(qmin, qmax) of a ``bits``-wide integer grid.

    Symmetric grids are narrow-range, ``[-(2^(b-1)-1), 2^(b-1)-1]`` (as Brevitas ``narrow_range`` and TensorRT),
    so the grid is symmetric around an exact zero and every code is used: 2-bit symmetric is ternary. Asymmetric
    grids use all ``2^b`` codes, ``[0, 2^b-1]``, with a zero point.
    """
    if bits < 2 or bits > 16:
        raise ValueError(f"integer bits must lie in [2, 16], got {bits}")
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def int_range_tensor(bits: Tensor, *, symmetric: bool) -> tuple[Tensor, Tensor]:
    """Per-row (qmin, qmax) as float tensors for a tensor of bit widths."""
    bits = bits.to(torch.float32)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return torch.zeros_like(bits), 2**bits - 1


def round_ste(x: Tensor) -> Tensor:
    """Round to nearest (ties to even) with a straight-through gradient."""
    return (torch.round(x) - x).detach() + x


def grad_scale(x: Tensor, factor: float) -> Tensor:
    """Identity in the forward pass, gradient multiplied by ``factor`` (the LSQ step-size gradient scale)."""
    return (x - x * factor).detach() + x * factor


def compute_qparams(
    lo: Tensor, hi: Tensor, qmin: Tensor, qmax: Tensor, *, symmetric: bool, eps: float = 1e-12
) -> tuple[Tensor, Tensor]:
    """Scale and zero point that map ``[lo, hi]`` (extended to contain 0) onto ``[qmin, qmax]``.

    Symmetric: ``scale = max(|lo|, |hi|) / qmax`` and zero point 0. Asymmetric: ``scale = (hi - lo) / (qmax -
    qmin)`` and an integer zero point so that 0.0 is exactly representable.
    """
    lo = torch.minimum(lo, torch.zeros_like(lo))
    hi = torch.maximum(hi, torch.zeros_like(hi))
    if symmetric:
        amax = torch.maximum(lo.abs(), hi.abs())
        scale = torch.clamp(amax / qmax, min=eps)
        return scale, torch.zeros_like(scale)
    scale = torch.clamp((hi - lo) / (qmax - qmin), min=eps)
    zero_point = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax)
    return scale, zero_point


def quantize_to_int(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: Tensor, qmax: Tensor) -> Tensor:
    """Integer codes ``clamp(round(x / scale) + zero_point, qmin, qmax)`` (as float tensor of whole numbers)."""
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """Real values of integer codes: ``(q - zero_point) * scale``."""
    return (q - zero_point) * scale


class _FakeQuantize(torch.autograd.Function):
    """``(clamp(round(x / s) + z, qmin, qmax) - z) * s`` with the straight-through / LSQ gradients in one node.

    The forward pass runs the same float operations as the textbook composition of :func:`round_ste` and a masked
    clamp (so values are bit-identical); the backward pass needs only the saved in-range mask for ``x`` (and the
    saved ``x / s`` and codes for a learned ``s``), instead of a dozen autograd nodes over activation-sized tensors.
    """

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: Tensor, qmax: Tensor) -> Tensor:
        u = x / scale
        v = torch.round(u) + zero_point
        q = torch.clamp(v, qmin, qmax)
        out = (q - zero_point) * scale
        need_s, need_z = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        inside = (v >= qmin) & (v <= qmax) if any(ctx.needs_input_grad[:3]) else None
        ctx.save_for_backward(
            inside,
            u if need_s else None,
            q if need_s else None,
            scale if need_z else None,
            zero_point if need_s else None,
        )
        ctx.shapes = (scale.shape, zero_point.shape)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        inside, u, q, scale, zero_point = ctx.saved_tensors
        s_shape, z_shape = ctx.shapes
        gx = gs = gz = None
        if ctx.needs_input_grad[0]:
            gx = torch.where(inside, grad, 0.0)
        if ctx.needs_input_grad[1]:  # d out / d s: round(u) - u inside the range, q - z outside
            gs = (grad * ((q - zero_point) - torch.where(inside, u, 0.0))).sum_to_size(s_shape)
        if ctx.needs_input_grad[2]:  # d out / d z: 0 inside the range, -s outside
            gz = torch.where(inside, 0.0, -grad * scale).sum_to_size(z_shape)
        return gx, gs, gz, None, None


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: Tensor, qmax: Tensor) -> Tensor:
    """Quantize and dequantize with a straight-through estimator (gradient 1 inside the range, 0 outside).

    If ``scale`` requires grad, its gradient is the LSQ step-size gradient (``round(x/s) - x/s`` inside the
    range, ``qmin - zp`` / ``qmax - zp`` outside); scale it with :func:`grad_scale` (or a gradient hook) as LSQ
    does. A zero point that requires grad gets ``-s`` outside the range and 0 inside. One autograd node (see
    :class:`_FakeQuantize`): differentiable once, not twice.
    """
    if not torch.is_grad_enabled() or not (
        x.requires_grad or scale.requires_grad or zero_point.requires_grad
    ):
        # no gradient wanted: the same operations in place on one buffer (bit-identical, no autograd node)
        out = (x / scale).round_().add_(zero_point).clamp_(qmin, qmax)
        return out.sub_(zero_point).mul_(scale)
    return _FakeQuantize.apply(x, scale, zero_point, qmin, qmax)


def float_cast(x: Tensor, fmt: str) -> Tensor:
    """Round ``x`` to float16 or bfloat16 and back to float32, straight-through gradient."""
    try:
        dtype = _FLOAT_DTYPES[fmt]
    except KeyError:
        raise ValueError(f"float format {fmt!r} unknown; choose one of {sorted(_FLOAT_DTYPES)}") from None
    return (x.to(dtype).to(x.dtype) - x).detach() + x


# -- grid views -----------------------------------------------------------------------------------------------
def to_grid(weight: Tensor, granularity: str, group_size: int | None = None) -> Tensor:
    """Reshape a weight ``[out, ...]`` into its scale grid ``[rows, cols]`` (per-group rows zero-padded)."""
    out_ch = weight.shape[0]
    flat = weight.reshape(out_ch, -1)
    if granularity == "per_tensor":
        return flat.reshape(1, -1)
    if granularity == "per_channel":
        return flat
    if granularity == "per_group":
        if group_size is None or group_size < 1:
            raise ValueError(f"per_group needs group_size >= 1, got {group_size!r}")
        fan_in = flat.shape[1]
        groups = math.ceil(fan_in / group_size)
        pad = groups * group_size - fan_in
        if pad:
            flat = torch.nn.functional.pad(flat, (0, pad))
        return flat.reshape(out_ch * groups, group_size)
    raise ValueError(f"granularity {granularity!r} unknown; choose per_tensor, per_channel or per_group")


def from_grid(grid: Tensor, shape: torch.Size, granularity: str) -> Tensor:
    """Inverse of :func:`to_grid` (drops per-group padding)."""
    out_ch = shape[0]
    fan_in = math.prod(shape[1:])
    if granularity == "per_group":
        return grid.reshape(out_ch, -1)[:, :fan_in].reshape(shape)
    return grid.reshape(shape)


def activation_grid(x: Tensor, granularity: str) -> Tensor:
    """Activations ``[batch, channels, ...]`` as a grid: a single row (``per_tensor``), one row per channel (dim 1,
    ``per_channel``) or one row per input of the batch (dim 0, ``per_sample``)."""
    if granularity == "per_tensor":
        return x.reshape(1, -1)
    if granularity == "per_channel":
        c = x.shape[1]
        return x.transpose(0, 1).reshape(c, -1)
    if granularity == "per_sample":
        return x.reshape(x.shape[0], -1)
    raise ValueError(
        f"activation granularity {granularity!r} unknown; choose per_tensor, per_channel or per_sample"
    )


def activation_minmax(x: Tensor, granularity: str) -> tuple[Tensor, Tensor]:
    """The per-row min and max of :func:`activation_grid` ``(x, granularity)`` (shape ``[rows, 1]``, the same
    values), reduced in place: no grid copy of a channels-last or otherwise strided ``x``."""
    if granularity == "per_tensor":
        return x.amin().reshape(1, 1), x.amax().reshape(1, 1)
    if granularity == "per_channel":
        dims = [d for d in range(x.dim()) if d != 1]
    elif granularity == "per_sample":
        dims = list(range(1, x.dim()))
    else:
        activation_grid(x, granularity)  # raises naming the valid granularities
    rows = x.shape[1] if granularity == "per_channel" else x.shape[0]
    if not dims:  # one value per row already (a 1-D input per sample)
        return x.reshape(rows, 1), x.reshape(rows, 1)
    return x.amin(dim=dims).reshape(rows, 1), x.amax(dim=dims).reshape(rows, 1)


def broadcast_act_qparams(p: Tensor, x: Tensor, granularity: str = "per_channel") -> Tensor:
    """Activation qparams of the grid rows reshaped to broadcast over ``x`` ``[B, C, ...]``: one value as a
    scalar, per-channel ``[C, 1]`` along dim 1, per-sample ``[B, 1]`` along dim 0."""
    if p.numel() == 1:
        return p.reshape(())
    if granularity == "per_sample":
        return p.reshape(-1, *([1] * (x.dim() - 1)))
    return p.reshape(1, -1, *([1] * (x.dim() - 2)))
