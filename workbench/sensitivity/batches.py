"""Batches as the analysis sees them: ``(inputs, targets)`` pairs (targets None for data without labels), the
first ``n`` batches of a loader, the device of a model and the bytes of a tensor (for the cache key)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from workbench.quant.inputs import batch_size, map_inputs, move_inputs, split_batch


def _split_batch(batch: Any) -> tuple[Any, Tensor | None]:
    """``(inputs, targets)``: inputs as they come (a tensor, a tuple or a dict of tensors), targets a tensor or
    None."""
    x, y = split_batch(batch)
    return x, (y if isinstance(y, Tensor) else None)


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _labelled(batches: Sequence[Any], what: str) -> list[tuple[Any, Tensor]]:
    out = []
    for batch in batches:
        x, y = _split_batch(batch)
        if y is None:
            raise ValueError(f"{what} needs (inputs, targets) batches; got batches without targets")
        out.append((x, y))
    if sum(int(y.shape[0]) for _, y in out) < 2:
        raise ValueError(
            f"{what} needs at least 2 labelled samples, got {sum(int(y.shape[0]) for _, y in out)}"
        )
    return out


def _inputs_batches(batches: Sequence[Any], what: str) -> list[tuple[Any, Tensor | None]]:
    """``(inputs, targets)`` per batch, targets None where the batches have none (label-free metrics)."""
    out = [_split_batch(batch) for batch in batches]
    n = sum(batch_size(x) for x, _ in out)
    if n < 2:
        labelled = "labelled " if all(y is not None for _, y in out) else ""
        raise ValueError(f"{what} needs at least 2 {labelled}samples, got {n}")
    return out


def _n_samples(batches: Sequence[tuple[Any, Tensor | None]]) -> int:
    return int(sum(batch_size(x) for x, _ in batches))


def _grad_inputs(x: Any, device: torch.device) -> Any:
    """``x`` on ``device``; float tensors detached and requiring grad (token ids and masks stay as they are)."""
    return map_inputs(
        move_inputs(x, device), lambda t: t.detach().requires_grad_(True) if t.is_floating_point() else t
    )


def _tensor_bytes(t: Tensor) -> bytes:
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _take(loader: Iterable, n: int | None) -> list[Any]:
    out = []
    for batch in loader:
        if n is not None and len(out) >= n:
            break
        out.append(batch)
    return out


LABEL_FREE_METRICS: tuple[str, ...] = ("output_mse", "output_kl")
"""The built-in metrics that need no targets: a task whose batches carry none is analysed with these."""


def has_labels(task: Any) -> bool:
    """True when the task's first calibration batch carries targets (``(inputs, targets)``)."""
    batches = _inputs_batches(_take(task.calib_loader, 1), "calibration data")
    return bool(batches) and batches[0][1] is not None
