"""Per-input statistics the policies read: input range / variance / entropy, output confidence, and the rung each
calibration input needed to keep the FP32 answer."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class InputAnalyzer:
    """Per-input statistics: range, variance, entropy (32-bin histogram) of the input."""

    names = ("range", "variance", "entropy", "abs_mean")

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        flat = x.reshape(x.shape[0], -1).float()
        lo, hi = flat.amin(1), flat.amax(1)
        var = flat.var(1, unbiased=False)
        bins = 32
        norm = ((flat - lo[:, None]) / (hi - lo).clamp(min=1e-8)[:, None] * (bins - 1)).round().long()
        counts = torch.zeros(flat.shape[0], bins, device=flat.device).scatter_add_(
            1, norm, torch.ones_like(flat)
        )
        p = counts / counts.sum(1, keepdim=True)
        ent = -(p * torch.log2(p.clamp(min=1e-12))).sum(1)
        return torch.stack([hi - lo, var, ent, flat.abs().mean(1)], 1).cpu().numpy()


def _output_features(logits: torch.Tensor) -> np.ndarray:
    p = F.softmax(logits.float(), dim=1)
    top2 = p.topk(2, dim=1).values
    ent = -(p * torch.log(p.clamp(min=1e-12))).sum(1)
    return torch.stack([top2[:, 0], top2[:, 0] - top2[:, 1], ent], 1).cpu().numpy()


def _needed_rung(logits: list[torch.Tensor], ref: torch.Tensor) -> np.ndarray:
    """Per input, the cheapest rung from which every more expensive rung agrees with FP32 (else the top)."""
    target = ref.argmax(1)
    agree = torch.stack([lg.argmax(1) == target for lg in logits], 1).cpu().numpy()  # [N, K]
    n, k = agree.shape
    need = np.full(n, k - 1)
    for i in range(n):
        ok = agree[i]
        for r in range(k):
            if ok[r:].all():
                need[i] = r
                break
    return need
