"""quantize_model: copy a model, fold BatchNorm, swap layers for fake-quant modules, calibrate.

The caller's model is never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from workbench.quant.coverage import warn_coverage
from workbench.quant.fusion import conv_bn_pairs, fold_batchnorm
from workbench.quant.inputs import call_model, move_inputs, split_batch
from workbench.quant.introspect import get_module, is_weight_only, quantizable_layers, set_module
from workbench.quant.modules import ActQuantizer, quant_twin
from workbench.quant.ptq import PtqContext, PtqRun
from workbench.quant.spec import PlanError, QuantPlan


def check_finite(model: nn.Module, layers: Iterable[str] | None = None) -> None:
    """Raise PlanError naming the first parameter with NaN or Inf values (in ``layers`` or the whole model)."""
    names = set(layers) if layers is not None else None
    for pname, p in model.named_parameters():
        owner = pname.rpartition(".")[0]
        if names is not None and owner not in names:
            continue
        if not torch.isfinite(p).all():
            bad = int((~torch.isfinite(p)).sum())
            raise PlanError(
                f"parameter {pname!r} has {bad} NaN/Inf values; quantization needs finite weights"
            )


def swap_modules(model: nn.Module, plan: QuantPlan, *, seed: int = 0) -> None:
    """Replace every planned, non-identity layer of ``model`` (a private copy) by its fake-quant twin."""
    for name, spec in plan.items():
        if spec.is_identity:
            continue
        try:
            twin = quant_twin(get_module(model, name), spec, seed=seed)
        except ValueError as e:  # validated earlier, kept as a guard
            raise PlanError(f"layer {name!r}: {e}") from None
        set_module(model, name, twin)


def _inputs(batch):
    """The model input of a calibration batch: a tensor or a dict as it comes, or ``batch[0]`` of a tuple."""
    try:
        return split_batch(batch)[0]
    except ValueError:
        raise PlanError(
            "calibration batches must be tensors, dicts of tensors or (inputs, targets) tuples, got "
            f"{type(batch).__name__}"
        ) from None


@torch.no_grad()
def calibrate(
    model: nn.Module, calib_loader, *, max_batches: int | None = None, progress: bool = False
) -> int:
    """Run calibration batches through ``model`` so every static activation quantizer fixes its range.

    Returns the number of batches used.
    """
    named = {n: m for n, m in model.named_modules() if isinstance(m, ActQuantizer) and m.needs_calibration}
    quantizers = list(named.values())
    if not quantizers:
        return 0
    device = next(model.parameters()).device
    for q in quantizers:
        q.start_observing()
    n = 0
    try:
        iterator = calib_loader
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(calib_loader, desc="calibrate", leave=False)
        for batch in iterator:
            if max_batches is not None and n >= max_batches:
                break
            try:
                call_model(model, move_inputs(_inputs(batch), device))
            except ValueError as e:
                raise PlanError(f"calibration batch {n}: {e}") from e
            n += 1
        if n == 0:
            raise PlanError("calibration data is empty: pass a loader with at least one batch")
        unused = [name.removesuffix(".a_quant") for name, q in named.items() if q.collector_empty]
        if unused:
            raise PlanError(
                f"planned layer(s) {unused} never ran on the calibration data; remove them from the plan or "
                "check the model's forward"
            )
    finally:
        for q in quantizers:
            q.observing = False
    for q in quantizers:
        q.finish_observing()
    return n


def quantize_model(
    model: nn.Module,
    plan: QuantPlan,
    calib_loader=None,
    *,
    fold_bn: bool = True,
    max_calib_batches: int | None = None,
    seed: int = 0,
    progress: bool = False,
    warn_float: bool = True,
    ptq: Sequence[Any] | str | None = None,
) -> nn.Module:
    """A quantized copy of ``model``: BatchNorm folded into quantized (or pruned / low-rank) convolutions, layers
    swapped, calibrated.

    ``calib_loader`` may be omitted only when no layer needs a static activation range. Layers missing from the
    plan, and layers whose spec is 32/32, run exactly as in ``model``. The returned model is in eval mode and
    carries its plan as ``model.quant_plan``.

    Weight modules left float are never left silently: unless ``warn_float`` is False, a
    :class:`~workbench.quant.coverage.CoverageWarning` lists the unsupported ones (their class and why) and the
    quantizable layers missing from the plan, with their shares of the weight parameters (layers the plan keeps
    at 32/32 are a choice, not warned about). SAME-padding convolutions and other subclasses a layer adapter
    takes (:mod:`workbench.quant.adapters`) are quantized with their pre-op kept in front.

    ``ptq``: post-training quantization steps (names such as ``"cle"``, ``"bias_correction"``, or configs such as
    ``AdaRoundConfig(iterations=500)``; see :mod:`workbench.quant.ptq`), run in the registry's fixed order whatever
    the order given: ``cle`` on the folded float copy before the swap, the others after calibration. Their reports
    are kept as ``model.ptq_reports``.
    """
    if not isinstance(model, nn.Module):
        raise PlanError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(plan, QuantPlan):
        raise PlanError(
            f"plan must be a QuantPlan, got {type(plan).__name__} (use QuantPlan.from_dict / load)"
        )
    plan.validate(model)
    check_finite(model, plan.layers.keys())
    if warn_float:
        warn_coverage(model, plan, stacklevel=3)
    needs_calib = any(  # weight-only layers (a_bits 32, Embedding) have no activation range to calibrate
        s.a_bits < 16 and not s.a_dynamic and not is_weight_only(model.get_submodule(n))
        for n, s in plan.layers.items()
    )
    if calib_loader is not None and hasattr(calib_loader, "__len__") and len(calib_loader) == 0:
        raise PlanError("calibration data is empty: pass a loader with at least one batch")
    if needs_calib and calib_loader is None:
        raise PlanError(
            "this plan quantizes activations statically: pass calib_loader (a DataLoader of inputs)"
        )

    ptq_run = PtqRun(ptq, PtqContext(plan, calib_loader, max_calib_batches, seed, progress))
    qmodel = copy.deepcopy(model).eval()
    pairs: list[tuple[str, str]] = []
    if fold_bn:
        weight_transformed = {n for n, s in plan.items() if s.transforms_weight}
        pairs = [(c, b) for c, b in conv_bn_pairs(qmodel) if c in weight_transformed]
        fold_batchnorm(qmodel, pairs)
    ptq_run.before_swap(qmodel)
    swap_modules(qmodel, plan, seed=seed)
    if needs_calib:
        calibrate(qmodel, calib_loader, max_batches=max_calib_batches, progress=progress)
    ptq_run.after_calibration(qmodel)
    qmodel.ptq_reports = ptq_run.ctx.reports
    qmodel.quant_plan = plan
    qmodel.folded_bn = pairs
    return qmodel


def quant_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The fake-quant layers of a quantized model by module path."""
    return {n: m for n, m in model.named_modules() if getattr(m, "is_quant_module", False)}


__all__ = [
    "calibrate",
    "check_finite",
    "conv_bn_pairs",
    "fold_batchnorm",
    "quant_modules",
    "quantizable_layers",
    "quantize_model",
    "swap_modules",
]
