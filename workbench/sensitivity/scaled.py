"""Sensitivity at every weight width from probes at a few: :class:`ScaledSensitivity`.

A single-layer probe costs a forward pass of the model per calibration batch, so probing every layer at every
width of a search space is the expensive part of a sensitivity pass on a large model. To first order a layer's
output error grows with the power of its weight quantization noise (the premise of HAWQ's Hessian-trace x
perturbation metric), and that noise is cheap to compute exactly, from the weights alone, at any width. So a
layer probed at ``b0`` bits gets, at a width ``b`` it was not probed at,

    S(layer, b) = S(layer, b0) x E(layer, b) / E(layer, b0),

``E`` the mean squared error of the layer's weights quantized at ``b`` bits with the probes' spec (observer,
symmetry, granularity), ``b0`` the probed width nearest to ``b`` (the wider one on a tie). Probed widths keep
their measured values. The noise model breaks down where
errors stop being small (at 2 bits the error grows much faster than the noise), so the narrowest width a search
may choose should be probed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from torch import nn

from workbench.quant.error import weight_error
from workbench.quant.modules import quantize_weight
from workbench.quant.spec import QuantSpec


class ScaledSensitivity:
    """A sensitivity result's per-bit weight matrices extended to ``bits`` (see the module docstring); every
    other query goes to the wrapped ``result``. ``model``: the model the result was computed on (its weights
    give the quantization noise); ``base_spec``: the probes' spec (its bits and granularity are replaced)."""

    def __init__(self, result: Any, model: nn.Module, bits: Sequence[int], *, base_spec: QuantSpec) -> None:
        self.result = result
        self.bits = tuple(sorted({int(b) for b in bits}))
        self._model = model
        self._base = base_spec
        self._noise: dict[tuple[str, str, int], float] = {}
        self.info = {**getattr(result, "info", {}), "scaled_to_bits": list(self.bits)}

    def __getattr__(self, name: str) -> Any:  # table, layer_names, ranking, ...: the wrapped result's
        return getattr(self.__dict__["result"], name)

    def metrics(self) -> list[str]:
        return self.result.metrics()

    def matrix(
        self,
        metric: str,
        *,
        bits: Sequence[int] | None = None,
        kind: str = "weight",
        granularity: str = "per_channel",
    ) -> pd.DataFrame:
        """:meth:`SensitivityResult.matrix`, weight rows extended to :attr:`bits` by the noise scaling."""
        probed = self.result.matrix(metric, kind=kind, granularity=granularity)
        if kind != "weight":
            return probed if bits is None else self.result.matrix(metric, bits=bits, kind=kind)
        wanted = sorted(set(self.bits) | {int(c) for c in probed.columns})
        out = pd.DataFrame(index=probed.index, columns=wanted, dtype="float64")
        columns = [int(c) for c in probed.columns]
        for b in wanted:
            if b in columns:
                out[b] = probed[b]
                continue
            out[b] = [self._estimate(probed, layer, granularity, b, columns) for layer in probed.index]
        out.columns.name = probed.columns.name
        return out if bits is None else out[list(bits)]

    def _estimate(
        self, probed: pd.DataFrame, layer: str, granularity: str, b: int, columns: list[int]
    ) -> float:
        """Scaled from the nearest probed width (the wider one on a tie: scaling down from a narrow probe
        overestimates most, because the error grows much faster than the noise at 2 bits)."""
        b0 = min(columns, key=lambda c: (abs(c - b), -c))
        return float(probed.loc[layer, b0]) * self._ratio(layer, granularity, b, b0)

    def _ratio(self, layer: str, granularity: str, b: int, b0: int) -> float:
        low = self._mse(layer, granularity, b0)
        return self._mse(layer, granularity, b) / low if low > 0 else 1.0

    def _mse(self, layer: str, granularity: str, b: int) -> float:
        key = (layer, granularity, b)
        if key not in self._noise:
            weight = self._model.get_submodule(layer).weight.detach()
            spec = self._base.with_(w_bits=b, granularity=granularity, group_size=None, channel_bits=None)
            self._noise[key] = weight_error(weight, quantize_weight(weight, spec)).mse
        return self._noise[key]


__all__ = ["ScaledSensitivity"]
