"""The cost of a precision map per input: BOPs, MAC-weighted average weight bits and estimated latency."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.quant.introspect import layer_costs
from workbench.runtime.switchable import SwitchableModel


@dataclass(frozen=True)
class MapCost:
    bops: float
    avg_bits: float
    latency_ms: float


class MapCoster:
    """BOPs, MAC-weighted average weight bits and (with a profile) estimated latency per input of a map."""

    def __init__(
        self, model: nn.Module, smodel: SwitchableModel, example_input: torch.Tensor, profile: Any = None
    ):
        self.smodel = smodel
        costs = layer_costs(model, example_input)
        self.macs = {g: [costs[n].macs for n in names] for g, names in smodel.groups.items()}
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
        a = self.smodel.a_bits
        bops = sum(m * int(precision_map[g]) * a for g, ms in self.macs.items() for m in ms)
        avg = sum(m * int(precision_map[g]) for g, ms in self.macs.items() for m in ms) / self.total_macs
        lat = math.nan
        if self.estimator is not None:
            lat = self.estimator(self.smodel.plan(precision_map)).latency_ms
        cost = MapCost(float(bops), float(avg), float(lat))
        self._cache[key] = cost
        return cost

    def value(self, precision_map: Mapping[str, int], kind: str) -> float:
        c = self(precision_map)
        return {"bops": c.bops, "avg_bits": c.avg_bits, "latency": c.latency_ms}[kind]
