"""Inputs for runtime adaptation: stacking loaders into tensors and distribution-shifted copies of a batch."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from workbench.runtime.config import SHIFTS


def _inputs(data: Any) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data.float()
    parts = [b[0] if isinstance(b, (tuple, list)) else b for b in data]
    if not parts:
        raise ValueError("calibration data is empty")
    return torch.cat(parts).float()


def _labels(data: Any) -> torch.Tensor:
    return torch.cat([b[1] for b in data])


stack_inputs = _inputs
"""All inputs of a tensor or a loader of ``(x, y)`` batches, as one float tensor."""
stack_labels = _labels
"""All labels of a loader of ``(x, y)`` batches, as one tensor."""


def shift_inputs(x: torch.Tensor, kind: str, *, seed: int = 0, severity: float = 1.0) -> torch.Tensor:
    """A distribution-shifted copy of ``x``: ``noise`` (Gaussian, 0.3 x severity of the input std), ``contrast``
    (halved around the mean, x severity), ``blur`` (3x3 Gaussian), or ``clean``."""
    if kind == "clean":
        return x.clone()
    if kind == "noise":
        gen = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same noise on every device
        return x + 0.3 * severity * x.std() * torch.randn(x.shape, generator=gen).to(x.device)
    if kind == "contrast":
        m = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
        return m + (x - m) * (1 - 0.5 * severity)
    if kind == "blur":
        k = torch.tensor([1.0, 2.0, 1.0], device=x.device)
        k2 = (k[:, None] * k[None, :]) / 16.0
        c = x.shape[1]
        w = k2.expand(c, 1, 3, 3).contiguous()
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), w, groups=c)
    raise ValueError(f"shift {kind!r} not valid; choose one of {SHIFTS}")
