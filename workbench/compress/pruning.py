"""Magnitude pruning masks: unstructured (single weights) or structured (whole output channels).

Pure torch: nothing here imports the rest of the workbench, so the quantization core may use it.
"""

from __future__ import annotations

import torch
from torch import Tensor

PRUNE_STRUCTURES: tuple[str, ...] = ("unstructured", "channel")


def _check(sparsity: float, structure: str) -> None:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not (0.0 <= sparsity < 1.0):
        raise ValueError(f"sparsity={sparsity!r} must be a number in [0, 1)")
    if structure not in PRUNE_STRUCTURES:
        raise ValueError(
            f"structure={structure!r} is not valid; choose one of {', '.join(map(repr, PRUNE_STRUCTURES))}"
        )


def num_pruned(weight_shape, sparsity: float, structure: str = "unstructured") -> int:
    """How many weights (unstructured) or output channels (channel) :func:`prune_mask` zeroes."""
    _check(sparsity, structure)
    shape = tuple(int(s) for s in weight_shape)
    if structure == "channel":
        out = shape[0]
        return min(int(round(sparsity * out)), out - 1)  # always keep one channel
    n = 1
    for s in shape:
        n *= s
    return int(round(sparsity * n))


def prune_mask(weight: Tensor, sparsity: float, structure: str = "unstructured") -> Tensor:
    """Boolean keep-mask of ``weight``'s shape (True = kept).

    ``unstructured``: the ``round(sparsity * numel)`` weights of smallest magnitude in the layer are zeroed.
    ``channel``: the ``round(sparsity * out_channels)`` output channels (dim 0) of smallest L2 norm are zeroed,
    at least one channel is kept. Ties go to the lower index (stable sort), so the mask is deterministic.
    """
    k = num_pruned(weight.shape, sparsity, structure)
    w = weight.detach()
    if structure == "channel":
        scores = w.reshape(w.shape[0], -1).double().pow(2).sum(dim=1)
        keep = torch.ones(w.shape[0], dtype=torch.bool, device=w.device)
        if k:
            keep[torch.sort(scores, stable=True).indices[:k]] = False
        return keep.reshape(-1, *([1] * (w.dim() - 1))).expand(w.shape).clone()
    flat = w.reshape(-1).abs()
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=w.device)
    if k:
        keep[torch.sort(flat, stable=True).indices[:k]] = False
    return keep.reshape(w.shape)


def kept_channels(mask: Tensor) -> Tensor:
    """Indices of the output channels a channel mask keeps (a row with any kept weight counts as kept)."""
    return torch.nonzero(mask.reshape(mask.shape[0], -1).any(dim=1)).reshape(-1)
