"""The cost of a precision map per input: BOPs, MAC-weighted average weight bits and estimated latency."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.quant.introspect import layer_costs
from workbench.quant.spec import macs_factor
from workbench.runtime.switchable import SwitchableModel


@dataclass(frozen=True)
class MapCost:
    bops: float
    avg_bits: float
    latency_ms: float


class MapCoster:
    """BOPs, MAC-weighted average weight bits and (with a profile) estimated latency per input of a map.

    Each layer counts at the spec it runs under the map (:meth:`SwitchableModel.spec_of`): BOPs are its MACs (the
    kept fraction for a pruned or low-rank spec) times its weight bits times its activation bits (32 for a float
    layer)."""

    def __init__(
        self, model: nn.Module, smodel: SwitchableModel, example_input: torch.Tensor, profile: Any = None
    ):
        self.smodel = smodel
        costs = layer_costs(model, example_input)
        self.macs = {g: [costs[n].macs for n in names] for g, names in smodel.groups.items()}
        self._shapes = {n: model.get_submodule(n).weight.shape for n in smodel.layers}
        self.total_macs = sum(sum(v) for v in self.macs.values())
        self.estimator = None
        if profile is not None:
            from workbench.hardware.estimate import CostEstimator

            self.estimator = CostEstimator(model, example_input, profile, batch_size=1)
        self._cache: dict[tuple, MapCost] = {}

    def __call__(self, precision_map: Mapping[str, int]) -> MapCost:
        key = tuple(int(precision_map[g]) for g in self.smodel.group_names)
        if key in self._cache:
            return self._cache[key]
        bops = avg = 0
        for g, names in self.smodel.groups.items():
            b = int(precision_map[g])
            for n, m in zip(names, self.macs[g], strict=True):
                spec = self.smodel.spec_of(n, b)
                a = 32 if spec is None else spec.a_bits
                factor = 1.0 if spec is None else macs_factor(spec, self._shapes[n])
                bops += m * b * a * (1 if factor == 1.0 else factor)
                avg += m * b
        avg = avg / self.total_macs
        lat = math.nan
        if self.estimator is not None:
            lat = self.estimator(self.smodel.plan(precision_map)).latency_ms
        cost = MapCost(float(bops), float(avg), float(lat))
        self._cache[key] = cost
        return cost

    def value(self, precision_map: Mapping[str, int], kind: str) -> float:
        c = self(precision_map)
        return {"bops": c.bops, "avg_bits": c.avg_bits, "latency": c.latency_ms}[kind]
