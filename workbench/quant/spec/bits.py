"""Storage bits and MAC factors of one layer's weight under a :class:`QuantSpec`."""

from __future__ import annotations

import math

from workbench.compress import low_rank_macs_ratio, num_pruned, rank_for
from workbench.quant.spec.layer import SCALE_BITS, ZERO_POINT_BITS, QuantSpec


def macs_factor(spec: QuantSpec, weight_shape) -> float:
    """MACs of the layer under ``spec`` over its dense MACs: kept fraction when pruned, factorised ratio when
    low-rank, 1 otherwise."""
    if spec.rank_ratio is not None:
        return low_rank_macs_ratio(weight_shape, rank_for(weight_shape, spec.rank_ratio))
    if spec.sparsity > 0:
        if spec.sparsity_structure == "channel":
            out = int(weight_shape[0])
            return (out - num_pruned(weight_shape, spec.sparsity, "channel")) / out
        n = int(math.prod(weight_shape))
        return (n - num_pruned(weight_shape, spec.sparsity, "unstructured")) / n
    return 1.0


def num_weight_groups(spec: QuantSpec, weight_shape) -> tuple[int, int]:
    """(rows, groups per row) of the scale grid for a weight of ``weight_shape`` under ``spec``."""
    out_ch = int(weight_shape[0])
    fan_in = int(math.prod(weight_shape[1:]))
    if spec.granularity == "per_tensor":
        return 1, 1
    if spec.granularity == "per_channel":
        return out_ch, 1
    return out_ch, math.ceil(fan_in / spec.group_size)


def layer_weight_storage_bits(spec: QuantSpec, weight_shape) -> int:
    """Exact storage of a quantized weight: packed integers + float32 scales + 8-bit zero points.

    16-bit weights are stored as 16-bit floats and 32-bit weights as float32 (no scales). Compressed layers:

    - unstructured pruning: the kept weights at their bits, a one-bit occupancy mask over all weights, and the
      scales / zero points of the dense layer;
    - channel pruning: a dense weight of the kept output channels (scales only for kept rows), removed rows cost
      nothing;
    - low-rank: factor ``A`` ``[out, r]`` plus factor ``B`` ``[r, fan_in]``, each quantized with the spec (per
      channel: one scale per row of each factor; per group: groups of ``group_size`` along each row; per tensor:
      one scale per factor).
    """
    shape = tuple(int(s) for s in weight_shape)
    if spec.rank_ratio is not None:
        out, fan_in = shape[0], math.prod(shape[1:])
        r = rank_for(shape, spec.rank_ratio)
        return _dense_storage_bits(spec, (out, r)) + _dense_storage_bits(spec, (r, fan_in))
    if spec.sparsity > 0:
        if spec.sparsity_structure == "channel":
            kept_rows = shape[0] - num_pruned(shape, spec.sparsity, "channel")
            return _dense_storage_bits(spec, (kept_rows, *shape[1:]))
        n = math.prod(shape)
        kept = n - num_pruned(shape, spec.sparsity, "unstructured")
        bits = kept * spec.w_bits + n  # kept values + one-bit occupancy mask
        if spec.w_bits >= 16:
            return bits
        n_scales = math.prod(num_weight_groups(spec, shape))
        return bits + n_scales * (SCALE_BITS + (0 if spec.w_symmetric else ZERO_POINT_BITS))
    return _dense_storage_bits(spec, shape)


def _dense_storage_bits(spec: QuantSpec, weight_shape) -> int:
    n = int(math.prod(weight_shape))
    out_ch = int(weight_shape[0])
    if spec.channel_bits is None and spec.w_bits >= 16:
        return spec.w_bits * n
    rows, groups = num_weight_groups(spec, weight_shape)
    if spec.channel_bits is not None:
        per_row = n // out_ch
        bits = sum(b * per_row for b in spec.channel_bits)
    else:
        bits = spec.w_bits * n
    n_scales = rows * groups
    bits += SCALE_BITS * n_scales
    if not spec.w_symmetric:
        bits += ZERO_POINT_BITS * n_scales
    return bits


# -- layer selection by glob patterns -----------------------------------------------------------------------
