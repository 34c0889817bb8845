"""Low-rank factorisation of a layer's weight by truncated SVD.

A weight ``[out, in, kh, kw]`` (or ``[out, in]``) seen as a matrix ``[out, fan_in]`` is replaced by ``A @ B`` with
``A: [out, r]`` and ``B: [r, fan_in]``: a convolution becomes an ``r``-channel ``kh x kw`` convolution followed by
a ``1 x 1`` convolution to ``out`` channels, a linear layer becomes two linear layers. Pure torch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _dims(weight_shape) -> tuple[int, int]:
    shape = tuple(int(s) for s in weight_shape)
    if len(shape) < 2:
        raise ValueError(f"a weight needs at least 2 dimensions (out, fan_in...), got shape {shape}")
    return shape[0], math.prod(shape[1:])


def rank_for(weight_shape, rank_ratio: float) -> int:
    """Rank ``max(1, round(rank_ratio * min(out, fan_in)))`` for ``rank_ratio`` in (0, 1]."""
    if (
        isinstance(rank_ratio, bool)
        or not isinstance(rank_ratio, (int, float))
        or not (0.0 < rank_ratio <= 1.0)
    ):
        raise ValueError(f"rank_ratio={rank_ratio!r} must be a number in (0, 1]")
    out, fan_in = _dims(weight_shape)
    return max(1, int(round(rank_ratio * min(out, fan_in))))


def _check_rank(weight_shape, rank: int) -> tuple[int, int]:
    out, fan_in = _dims(weight_shape)
    if isinstance(rank, bool) or not isinstance(rank, int) or not (1 <= rank <= min(out, fan_in)):
        raise ValueError(
            f"rank={rank!r} must be an integer in [1, {min(out, fan_in)}] for shape {tuple(weight_shape)}"
        )
    return out, fan_in


def low_rank_factors(weight: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Truncated SVD ``W ~ A @ B`` with ``A = U_r sqrt(S_r)`` ``[out, r]`` and ``B = sqrt(S_r) Vh_r`` ``[r, fan_in]``.

    ``A @ B`` is the best rank-``r`` approximation of ``W.reshape(out, -1)`` in Frobenius norm (Eckart-Young); the
    SVD runs in float64 and the factors come back in ``weight``'s dtype.
    """
    out, _ = _check_rank(weight.shape, rank)
    mat = weight.detach().reshape(out, -1).to(torch.float64)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    root = s[:rank].sqrt()
    a = u[:, :rank] * root
    b = root[:, None] * vh[:rank]
    return a.to(weight.dtype).contiguous(), b.to(weight.dtype).contiguous()


def low_rank_params(weight_shape, rank: int) -> int:
    """Parameters of the two factors: ``r * (fan_in + out)``."""
    out, fan_in = _check_rank(weight_shape, rank)
    return rank * (fan_in + out)


def low_rank_macs_ratio(weight_shape, rank: int) -> float:
    """MACs of the factorised layer over the dense layer's: ``r * (fan_in + out) / (out * fan_in)``."""
    out, fan_in = _check_rank(weight_shape, rank)
    return rank * (fan_in + out) / (out * fan_in)
