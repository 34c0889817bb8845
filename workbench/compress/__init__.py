"""Compression methods beside quantization: magnitude pruning and low-rank factorisation (pure torch).

This package imports nothing from the rest of the workbench, so the quantization core can build on it.
"""

from workbench.compress.lowrank import low_rank_factors, low_rank_macs_ratio, low_rank_params, rank_for
from workbench.compress.pruning import PRUNE_STRUCTURES, kept_channels, num_pruned, prune_mask

__all__ = [
    "PRUNE_STRUCTURES",
    "kept_channels",
    "low_rank_factors",
    "low_rank_macs_ratio",
    "low_rank_params",
    "num_pruned",
    "prune_mask",
    "rank_for",
]
