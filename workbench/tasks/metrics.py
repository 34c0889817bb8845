"""Metrics of a task (higher is better): labelled top-1 accuracy (:func:`~workbench.training.evaluate_accuracy`,
the default), ``eval_fn(model)`` scores (:class:`EvalFnMetric`) and fidelity to the FP32 model's outputs
(:func:`fidelity_metric`, :class:`FidelityMetric`: no labels needed), plus :func:`metric_name`, the name every
stage reports them under.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from workbench.devices import model_device
from workbench.quant.inputs import (
    call_model,
    describe_inputs,
    input_tensors,
    move_inputs,
    primary_output,
    split_batch,
)
from workbench.training import evaluate_accuracy

__all__ = [
    "FIDELITY_KINDS",
    "EvalFnMetric",
    "FidelityMetric",
    "Metric",
    "evaluate_accuracy",
    "fidelity_metric",
    "fidelity_report",
    "metric_name",
]

Metric = Callable[[nn.Module, DataLoader], float]


def _check_score(value: Any, what: str) -> float:
    """``value`` as a float; NaN or something that is not a number raises ValueError naming the value."""
    if (isinstance(value, torch.Tensor) and value.numel() == 1) or isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise ValueError(
            f"{what} returned {shown} (a {type(value).__name__}); it must return a number (a float, higher "
            "is better)"
        )
    if math.isnan(value):
        raise ValueError(f"{what} returned NaN; it must return a number (a float, higher is better)")
    return float(value)


class EvalFnMetric:
    """A :data:`Metric` from ``eval_fn(model) -> float`` (higher is better): the loader is ignored (the function
    scores the model on data of its own). NaN or a non-number raises ValueError naming the value."""

    def __init__(self, eval_fn: Callable[[nn.Module], float]) -> None:
        if not callable(eval_fn):
            raise TypeError(f"eval_fn must be callable (model) -> float, got {type(eval_fn).__name__}")
        self.eval_fn = eval_fn
        fn = getattr(eval_fn, "__qualname__", type(eval_fn).__name__)
        self.__qualname__ = f"eval_fn:{getattr(eval_fn, '__module__', '?')}.{fn}"  # names it in cache keys

    def __call__(self, model: nn.Module, loader: Any = None) -> float:
        return _check_score(self.eval_fn(model), f"eval_fn {self.__qualname__.removeprefix('eval_fn:')}")

    def __repr__(self) -> str:
        return f"EvalFnMetric({self.__qualname__.removeprefix('eval_fn:')})"


FIDELITY_KINDS: tuple[str, ...] = (
    "cosine",
    "min_cosine",
    "neg_rel_mse",
    "topk_agreement",
    "top1_agreement",
    "neg_kl",
)
"""Kinds of :func:`fidelity_metric` (each higher-is-better; :func:`fidelity_report` gives them side by side)."""


def _batch_digest(inputs: Any) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(describe_inputs(inputs).encode())
    for path, t in input_tensors(inputs):
        h.update(path.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def _primary_outputs(model: nn.Module, batches: Iterable[Any], key: str | int | None) -> list[torch.Tensor]:
    """``primary_output`` of ``model`` on each inputs batch (eval mode, every module's flag restored)."""
    device = model_device(model)
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        return [primary_output(call_model(model, move_inputs(x, device)), key=key).detach() for x in batches]
    finally:
        for m, flag in flags.items():
            m.training = flag


class FidelityMetric:
    """How closely a model's outputs follow the FP32 reference model's on the same data (higher is better).

    Built by :func:`fidelity_metric`; called as ``metric(model, loader) -> float`` like any :data:`Metric`.
    Targets in the loader's batches are ignored, so loaders may yield inputs only (tensors or dicts).
    """

    def __init__(
        self,
        reference_model: nn.Module,
        kind: str = "cosine",
        *,
        output_key: str | int | None = None,
        k: int = 5,
    ) -> None:
        if not isinstance(reference_model, nn.Module):
            raise TypeError(
                f"reference_model must be a torch.nn.Module, got {type(reference_model).__name__}"
            )
        if kind not in FIDELITY_KINDS:
            raise ValueError(f"unknown fidelity kind {kind!r}; choose one of {list(FIDELITY_KINDS)}")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        self.reference_model = reference_model
        self.kind = kind
        self.output_key = output_key
        self.k = k
        self.__qualname__ = f"fidelity_metric({kind}, output_key={output_key!r}, k={k})"  # cache-key name
        self._cache: dict[int, tuple[Any, list[tuple[str, torch.Tensor]]]] = {}

    def __repr__(self) -> str:
        return f"FidelityMetric(kind={self.kind!r}, output_key={self.output_key!r}, k={self.k})"

    def reference(self, loader: Iterable) -> list[torch.Tensor]:
        """The reference model's outputs on ``loader`` (one CPU tensor per batch), computed once per loader
        object and kept (a batch whose inputs changed since, e.g. a shuffled loader, is recomputed)."""
        return [r for _, r in self._reference(loader, [split_batch(b)[0] for b in loader])]

    def _reference(self, loader: Iterable, batches: list[Any]) -> list[tuple[str, torch.Tensor]]:
        digests = [_batch_digest(x) for x in batches]
        hit = self._cache.get(id(loader))
        cached = hit[1] if hit is not None and hit[0] is loader else []
        out: list[tuple[str, torch.Tensor] | None] = [
            cached[i] if i < len(cached) and cached[i][0] == d else None for i, d in enumerate(digests)
        ]
        missing = [i for i, o in enumerate(out) if o is None]
        if missing:
            refs = _primary_outputs(self.reference_model, [batches[i] for i in missing], self.output_key)
            for i, r in zip(missing, refs):
                r = r.float().cpu()
                if not torch.isfinite(r).all():
                    raise ValueError(
                        f"the reference model's output has NaN/Inf values on batch {i} "
                        f"({describe_inputs(batches[i])}); fidelity needs a finite FP32 reference"
                    )
                out[i] = (digests[i], r)
        result = [o for o in out if o is not None]
        if hit is None or hit[0] is not loader or missing:
            self._cache[id(loader)] = (loader, result)  # the loader is held, so its id is not reused
        return result

    def _stats(self, model: nn.Module, loader: Iterable, kinds: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Per-sample / per-row statistics of ``model`` vs the reference over the whole ``loader``."""
        batches = [split_batch(b)[0] for b in loader]
        if not batches:
            raise ValueError("fidelity_metric got an empty loader (no batches)")
        refs = [r for _, r in self._reference(loader, batches)]
        # the reference model scored against itself: its outputs are the reference (one forward pass, not two)
        outs = refs if model is self.reference_model else _primary_outputs(model, batches, self.output_key)
        parts: dict[str, list[torch.Tensor]] = {}
        for i, (y, r) in enumerate(zip(outs, refs)):
            if tuple(y.shape) != tuple(r.shape):
                raise ValueError(
                    f"model output shape {tuple(y.shape)} differs from the reference's {tuple(r.shape)} on batch {i}"
                )
            # a broken (e.g. overflowing) quantized model gets a poor but finite score
            y = torch.nan_to_num(y.double().cpu(), nan=0.0, posinf=3.4e38, neginf=-3.4e38)
            for name, value in _batch_stats(y, r.double(), kinds, self.k).items():
                parts.setdefault(name, []).append(value)
        return {name: torch.cat(values) for name, values in parts.items()}

    def __call__(self, model: nn.Module, loader: Iterable) -> float:
        stats = self._stats(model, loader, (self.kind,))
        if self.kind == "min_cosine":
            return float(stats["cosine"].min())
        if self.kind == "neg_rel_mse":
            err, ref_sq = float(stats["err"].sum()), float(stats["ref_sq"].sum())
            return -err / ref_sq if ref_sq > 0 else (0.0 if err == 0 else -math.inf)
        if self.kind == "neg_kl":
            return -float(stats["kl"].mean())
        return float(stats[self.kind].mean())

    def report(self, model: nn.Module, loader: Iterable) -> dict[str, float]:
        """Every fidelity figure of ``model`` on the whole ``loader`` (see :func:`fidelity_report`)."""
        stats = self._stats(model, loader, ("cosine", "neg_kl", "topk_agreement", "top1_agreement"))
        return {
            "cosine": float(stats["cosine"].mean()),
            "kl": float(stats["kl"].mean()),
            f"top{self.k}_overlap": float(stats["topk_agreement"].mean()),
            "top1_agreement": float(stats["top1_agreement"].mean()),
            "samples": int(stats["cosine"].numel()),
        }


def _batch_stats(y: torch.Tensor, r: torch.Tensor, kinds: tuple[str, ...], k: int) -> dict[str, torch.Tensor]:
    """The statistics ``kinds`` need of one batch (``y`` the model's output, ``r`` the reference's, float64):
    per sample ``cosine`` (flattened over all dims but 0), per row of the last dim ``kl`` (KL(ref || model) of
    their softmaxes), ``topk_agreement`` (share of the reference's top-k in the model's), ``top1_agreement``;
    per batch ``err`` / ``ref_sq`` (summed squares)."""
    out: dict[str, torch.Tensor] = {}
    if {"cosine", "min_cosine"} & set(kinds):
        y2, r2 = y.reshape(y.shape[0], -1), r.reshape(r.shape[0], -1)
        num = (y2 * r2).sum(dim=1)
        den = y2.norm(dim=1) * r2.norm(dim=1)
        out["cosine"] = torch.where(den > 0, num / den.clamp_min(1e-300), (y2 == r2).all(dim=1).double())
    if "neg_rel_mse" in kinds:
        out["err"] = (y - r).pow(2).sum().reshape(1)
        out["ref_sq"] = r.pow(2).sum().reshape(1)
    width = r.shape[-1] if r.dim() > 1 else 1
    y2, r2 = y.reshape(-1, width), r.reshape(-1, width)
    if "topk_agreement" in kinds:
        iy, ir = y2.topk(min(k, width), dim=1).indices, r2.topk(min(k, width), dim=1).indices
        out["topk_agreement"] = (iy.unsqueeze(2) == ir.unsqueeze(1)).any(dim=2).double().mean(dim=1)
    if "top1_agreement" in kinds:
        out["top1_agreement"] = (y2.argmax(dim=1) == r2.argmax(dim=1)).double()
    if "neg_kl" in kinds:
        log_r, log_y = torch.log_softmax(r2, dim=1), torch.log_softmax(y2, dim=1)
        out["kl"] = (log_r.exp() * (log_r - log_y)).sum(dim=1).clamp_min(0.0)
    return out


DISCRETE_METRICS: tuple[str, ...] = ("accuracy", "top1_agreement", "topk_agreement")
"""Metric names whose values are counts over a split: plans tie often, and a saturated split cannot rank them."""


def metric_name(metric: Any) -> str:
    """The name of what ``metric`` measures: ``"accuracy"`` for the default labelled top-1
    (:func:`~workbench.models.evaluate_accuracy`), the kind of a :class:`FidelityMetric` (``"cosine"``, ...), the
    ``__name__`` of an :class:`EvalFnMetric`'s ``eval_fn``, else the callable's ``__name__`` (through
    ``functools.partial``), else its type's name."""
    if isinstance(metric, FidelityMetric):
        return metric.kind
    fn = metric.eval_fn if isinstance(metric, EvalFnMetric) else metric
    while isinstance(fn, functools.partial):
        fn = fn.func
    if fn is evaluate_accuracy:
        return "accuracy"
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) and name else type(fn).__name__


def fidelity_metric(
    reference_model: nn.Module, kind: str = "cosine", *, output_key: str | int | None = None, k: int = 5
) -> FidelityMetric:
    """A :data:`Metric` ``(model, loader) -> float`` (higher is better) comparing a model's outputs with the
    FP32 ``reference_model``'s outputs on the same batches (no labels needed).

    The compared output is :func:`workbench.quant.inputs.primary_output` of the model's output (``logits``,
    ``last_hidden_state`` or the first tensor; ``output_key`` picks a key, attribute or tuple index). ``kind``:

    * ``"cosine"`` — mean over samples of the cosine similarity of the output, flattened per sample (all dims
      but dim 0); 1 is a perfect match.
    * ``"min_cosine"`` — the worst sample's cosine.
    * ``"neg_rel_mse"`` — minus the relative squared error over the whole loader,
      ``-sum ||y - y_ref||^2 / sum ||y_ref||^2``: 0 is a perfect match, -1 is as far off as outputting zeros.
    * ``"topk_agreement"`` — mean over rows of the last dimension (samples, or tokens of a sequence output) of
      the share of the reference's top-``k`` entries that are also in the model's top-``k`` (1 is a perfect
      match; ``k`` is capped at the last dimension's size).
    * ``"top1_agreement"`` — share of rows of the last dimension whose argmax matches the reference's.
    * ``"neg_kl"`` — minus the mean over rows of KL(reference || model) of the softmax of the last dimension
      (0 is a perfect match). Low-margin inputs flip their argmax under tiny changes: never read top-1
      agreement alone; :func:`fidelity_report` gives all the figures of the whole loader.

    The reference outputs are computed once per loader object and cached (with a digest of each batch's inputs:
    a batch that changed is recomputed). The reference model is used as it is (not copied, never modified).
    Non-finite values in a quantized model's output are replaced as ``torch.nan_to_num`` does before scoring.
    """
    return FidelityMetric(reference_model, kind, output_key=output_key, k=k)


def fidelity_report(
    model: nn.Module,
    reference: nn.Module | FidelityMetric,
    loader: Iterable,
    *,
    output_key: str | int | None = None,
    k: int = 5,
) -> dict[str, float]:
    """Every fidelity figure of ``model`` against the FP32 ``reference`` on the whole ``loader`` (no labels):

    * ``cosine`` — mean per-sample cosine of the outputs (the default primary metric for search);
    * ``kl`` — mean KL(reference || model) of the softmax over the last dimension (0 is a perfect match);
    * ``top{k}_overlap`` (``top5_overlap`` by default) — mean share of the reference's top-k in the model's;
    * ``top1_agreement`` — share of rows whose argmax matches the reference's;
    * ``samples`` — how many samples the cosine averages over.

    ``reference`` is the FP32 model, or a :class:`FidelityMetric` (its cached reference outputs, ``output_key``
    and ``k`` are used). Low-margin inputs flip their argmax under tiny perturbations: read top-1 agreement
    beside the cosine / KL, never alone.
    """
    metric = (
        reference
        if isinstance(reference, FidelityMetric)
        else FidelityMetric(reference, "cosine", output_key=output_key, k=k)
    )
    return metric.report(model, loader)
