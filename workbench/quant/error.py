"""Quantization error of weights: one tensor under one spec, or a whole model across bit widths."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import pandas as pd
from torch import Tensor, nn

from workbench.quant.introspect import quantizable_layers
from workbench.quant.modules import quantize_weight
from workbench.quant.spec import PlanError, QuantSpec


@dataclass(frozen=True)
class WeightError:
    """Error of a quantized weight against the float weight."""

    mse: float
    rel_mse: float
    sqnr_db: float
    max_abs: float
    levels: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def weight_error(weight: Tensor, quantized: Tensor) -> WeightError:
    """MSE, relative MSE, signal-to-quantization-noise ratio (dB), max error and distinct levels."""
    w = weight.detach().float()
    diff = quantized.detach().float() - w
    mse = float(diff.pow(2).mean())
    power = float(w.pow(2).mean())
    rel = mse / power if power > 0 else 0.0
    sqnr = 10 * math.log10(power / mse) if mse > 0 and power > 0 else float("inf")
    return WeightError(
        mse=mse,
        rel_mse=rel,
        sqnr_db=sqnr,
        max_abs=float(diff.abs().max()),
        levels=int(quantized.unique().numel()),
    )


def layer_weight(model: nn.Module, layer: str) -> Tensor:
    """The weight of a quantizable layer, by module path (error lists the valid names)."""
    names = quantizable_layers(model)
    if layer not in names:
        raise PlanError(f"layer {layer!r} is not a quantizable layer of this model; valid layers: {names}")
    return model.get_submodule(layer).weight.detach()


def weight_error_table(
    model: nn.Module,
    *,
    bits: Sequence[int] = (2, 3, 4, 5, 6, 8),
    granularities: Sequence[str] = ("per_tensor", "per_channel"),
    observer: str = "minmax",
) -> pd.DataFrame:
    """One row per (layer, granularity, bits): weight quantization error of every quantizable layer."""
    rows = []
    for layer in quantizable_layers(model):
        w = layer_weight(model, layer)
        for gran in granularities:
            for b in bits:
                spec = QuantSpec(w_bits=b, granularity=gran, w_observer=observer)
                err = weight_error(w, quantize_weight(w, spec))
                rows.append({"layer": layer, "granularity": gran, "w_bits": b, **err.to_dict()})
    return pd.DataFrame(rows)
