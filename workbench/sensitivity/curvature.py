"""Curvature estimators: the Hessian trace of each layer's weight by Hutchinson's estimator (HAWQ-V2) and the
Fisher score of each layer's output (mean over samples of the squared gradient norm)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.quant.inputs import call_model, move_inputs, primary_output
from workbench.sensitivity.batches import _device, _grad_inputs, _labelled


@dataclass(frozen=True)
class HutchinsonResult:
    """Hutchinson estimates per layer: weight Hessian trace, per-output-channel traces (they sum to the
    trace), iterations used and whether the stopping rule was met before ``max_iter``."""

    trace: dict[str, float]
    channel_trace: dict[str, np.ndarray]
    iterations: dict[str, int]
    converged: dict[str, bool]


def _weights(model: nn.Module, layers: Sequence[str]) -> list[Tensor]:
    names = {n for n, _ in model.named_modules()}
    missing = [n for n in layers if n not in names]
    if missing:
        raise ValueError(f"layers {missing} are not modules of the model")
    return [model.get_submodule(n).weight for n in layers]


def hutchinson_trace(
    model: nn.Module,
    layers: Sequence[str],
    batches: Sequence[Any],
    *,
    tol: float = 1e-2,
    max_iter: int = 100,
    min_iter: int = 8,
    window: int = 3,
    seed: int = 0,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    progress: bool = False,
    output_key: str | int | None = None,
) -> HutchinsonResult:
    """Trace of the Hessian of the mean loss over ``batches`` w.r.t. each layer's weight (Hutchinson, HAWQ-V2).

    Each iteration draws one Rademacher vector ``v`` over all the layers' weights (seeded) and computes ``Hv``
    by double backward; ``v_l . (Hv)_l`` is an unbiased sample of layer ``l``'s block trace (the cross-layer
    terms have zero mean; converged layers get ``v_l = 0`` so they stop adding to the others' variance). A layer
    stops once ``min_iter`` samples are in and the relative change of its running mean stayed below ``tol`` for
    ``window`` consecutive iterations; all stop at ``max_iter``. The loss is taken on the output ``output_key``
    chooses (see :func:`~workbench.quant.inputs.primary_output`). The model runs in eval mode; its parameters,
    gradients and training flags are left as they were.
    """
    if not layers:
        raise ValueError("hutchinson_trace needs at least one layer")
    if max_iter < 1 or min_iter < 1 or window < 1:
        raise ValueError(f"max_iter, min_iter and window must be >= 1, got {max_iter}, {min_iter}, {window}")
    data = _labelled(batches, "the Hessian trace estimator")
    params = _weights(model, layers)
    device = _device(model)
    n_total = sum(int(y.shape[0]) for _, y in data)
    modes = {m: m.training for m in model.modules()}
    flags = [p.requires_grad for p in params]
    model.eval()
    try:
        for p in params:
            p.requires_grad_(True)
        grads = []
        for x, y in data:
            out = primary_output(call_model(model, move_inputs(x, device)), key=output_key)
            loss = loss_fn(out, y.to(device)) * (y.shape[0] / n_total)
            grads.append(torch.autograd.grad(loss, params, create_graph=True))
        return _hutchinson_loop(
            list(layers), params, grads, tol=tol, max_iter=max_iter, min_iter=min_iter, window=window,
            seed=seed, progress=progress,
        )  # fmt: skip
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        for m, mode in modes.items():
            m.training = mode


def _hessian_vector(
    params: list[Tensor], grads: list[tuple[Tensor, ...]], v: list[Tensor | None]
) -> list[Tensor]:
    """``H v`` summed over the batches' gradient graphs; entries of ``v`` that are None count as zero."""
    hv = [torch.zeros_like(p) for p in params]
    for g in grads:
        idx = [i for i, gi in enumerate(g) if gi.requires_grad and v[i] is not None]
        if not idx:
            continue
        parts = torch.autograd.grad(
            [g[i] for i in idx],
            params,
            grad_outputs=[v[i] for i in idx],
            retain_graph=True,
            allow_unused=True,
        )
        for i, part in enumerate(parts):
            if part is not None:
                hv[i] += part
    return hv


def _hutchinson_loop(
    layers: list[str],
    params: list[Tensor],
    grads: list[tuple[Tensor, ...]],
    *,
    tol: float,
    max_iter: int,
    min_iter: int,
    window: int,
    seed: int,
    progress: bool,
) -> HutchinsonResult:
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    n_layers = len(layers)
    sums = np.zeros(n_layers)
    chan_sums = [np.zeros(p.shape[0]) for p in params]
    counts = np.zeros(n_layers, dtype=int)
    calm = np.zeros(n_layers, dtype=int)  # consecutive iterations with a small relative change
    active = np.ones(n_layers, dtype=bool)
    bar = tqdm(total=max_iter, desc="hutchinson", leave=False, disable=not progress)
    try:
        for _ in range(max_iter):
            signs = [torch.randint(0, 2, p.shape, generator=gen, dtype=torch.int8) * 2 - 1 for p in params]
            # converged layers get v = 0: their cross terms stop adding variance to the others' estimates
            v = [
                sg.to(p.dtype).to(p.device) if active[i] else None
                for i, (sg, p) in enumerate(zip(signs, params))
            ]
            hv = _hessian_vector(params, grads, v)
            for i in np.flatnonzero(active):
                prod = (v[i] * hv[i]).detach().double().cpu()  # type: ignore[operator]
                prev = sums[i] / counts[i] if counts[i] else None
                sums[i] += float(prod.sum())
                chan_sums[i] += prod.reshape(prod.shape[0], -1).sum(dim=1).numpy()
                counts[i] += 1
                mean = sums[i] / counts[i]
                if prev is not None:
                    change = abs(mean - prev) / max(abs(mean), 1e-30)
                    calm[i] = calm[i] + 1 if change < tol else 0
                if counts[i] >= min_iter and calm[i] >= window:
                    active[i] = False
            bar.update(1)
            bar.set_postfix(active=int(active.sum()))
            if not active.any():
                break
    finally:
        bar.close()
    return HutchinsonResult(
        trace={name: float(sums[i] / counts[i]) for i, name in enumerate(layers)},
        channel_trace={name: chan_sums[i] / counts[i] for i, name in enumerate(layers)},
        iterations={name: int(counts[i]) for i, name in enumerate(layers)},
        converged={name: bool(not active[i]) for i, name in enumerate(layers)},
    )


def fisher_scores(
    model: nn.Module,
    layers: Sequence[str],
    batches: Sequence[Any],
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    output_key: str | int | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Mean over samples of ``||dL_i/dy_i||^2`` for each layer output ``y`` (per-sample cross-entropy ``L_i``),
    and the same per output channel (dim 1 of ``y``; the channels sum to the layer's value).

    ``loss_fn(logits, targets)`` must return the *sum* of per-sample losses (default cross-entropy with
    ``reduction="sum"``) so that each sample's output gradient is its own loss's gradient; it gets the output
    ``output_key`` chooses (see :func:`~workbench.quant.inputs.primary_output`). The model runs in eval mode;
    nothing of it is changed.
    """
    loss_fn = loss_fn or (lambda logits, y: F.cross_entropy(logits, y, reduction="sum"))
    data = _labelled(batches, "the Fisher score")
    modules = [(name, model.get_submodule(name)) for name in layers]
    device = _device(model)
    totals = {name: 0.0 for name in layers}
    channels: dict[str, np.ndarray | None] = {name: None for name in layers}
    n = 0
    outputs: list[tuple[str, Tensor]] = []

    def hook(name: str):
        def record(_m: nn.Module, _inputs: Any, out: Tensor) -> Tensor:
            outputs.append((name, out))
            return out.clone()  # downstream in-place ops (ReLU(inplace=True)) change the copy, not out

        return record

    modes = {m: m.training for m in model.modules()}
    model.eval()
    handles = [mod.register_forward_hook(hook(name)) for name, mod in modules]
    try:
        for x, y in data:
            outputs.clear()
            with torch.enable_grad():
                x = _grad_inputs(x, device)
                loss = loss_fn(primary_output(call_model(model, x), key=output_key), y.to(device))
                grads = torch.autograd.grad(loss, [o for _, o in outputs], allow_unused=True)
            for (name, out), g in zip(outputs, grads):
                sq = (torch.zeros_like(out) if g is None else g).detach().double().pow(2).cpu()
                sq = sq if sq.dim() > 1 else sq.unsqueeze(1)
                per_ch = sq.sum(dim=0).reshape(sq.shape[1], -1).sum(dim=1).numpy()
                totals[name] += float(sq.sum())
                channels[name] = per_ch if channels[name] is None else channels[name] + per_ch
            n += int(y.shape[0])
    finally:
        for h in handles:
            h.remove()
        outputs.clear()
        for m, mode in modes.items():
            m.training = mode
    unused = [name for name in layers if channels[name] is None]
    if unused:
        raise ValueError(f"layers {unused} were not called in the forward pass")
    return (
        {name: totals[name] / n for name in layers},
        {name: channels[name] / n for name in layers},  # type: ignore[operator]
    )
