"""The search space: per-layer (or per-group) choices of bits, granularity and compression method.

A :class:`SearchSpace` is built from a model and a :class:`SpaceConfig`. Its *units* are the things a search
decides: a single layer, or a named group of layers forced to share one choice (e.g. residual partners).
Every unit has the same fixed set of categorical parameters, named ``"<unit>/<knob>"``:

* ``method``: ``quantize`` | ``prune`` | ``lowrank`` | ``none`` (float32, the layer is left alone);
* ``w_bits``, ``a_bits``, ``granularity``: the precision (prune and low-rank layers are quantized too);
* ``sparsity`` and ``structure`` (only when ``prune`` is a method), ``rank_ratio`` (only with ``lowrank``).

Parameters are always suggested, whatever the method, so every sampler sees one fixed space (NSGA-II, the RL
controller and multivariate TPE need that); knobs a method does not use are ignored when the plan is built,
and :meth:`SearchSpace.plan_key` identifies plans that only differ in ignored knobs.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from workbench.quant.introspect import layer_type
from workbench.quant.spec import FP32, PlanError, QuantPlan, QuantSpec
from workbench.search.space_config import (
    A_BITS,
    GRANULARITIES,
    KNOBS,
    METHODS,
    RANK_RATIOS,
    SPARSITIES,
    STRUCTURES,
    W_BITS,
    SpaceConfig,
    Unit,
    UnitChoices,
)
from workbench.search.space_units import (
    build_units,
    checked_config,
    config_groups,
    fixed_and_taken,
    group_members,
    residual_groups,
)


class SearchSpace:
    """Units, their choices, and the mapping between Optuna parameters and QuantPlans."""

    def __init__(self, model: nn.Module, config: SpaceConfig | None = None) -> None:
        config, names = checked_config(model, config)
        self.config = config
        self.layers: tuple[str, ...] = tuple(names)
        modules = dict(model.named_modules())
        self.out_channels = {n: int(modules[n].weight.shape[0]) for n in names}
        tables = [n for n in names if layer_type(modules[n]) == "Embedding"]
        self.fixed, taken = fixed_and_taken(config, names, tables)
        groups = config_groups(model, config)
        default = config.default_choices()
        group_units, grouped = group_members(groups, names, taken)
        self.units: tuple[Unit, ...] = build_units(config, default, names, taken, group_units, grouped)
        self._unit_index = {u.name: i for i, u in enumerate(self.units)}

    # -- parameters --------------------------------------------------------------------------------------
    @staticmethod
    def param_name(unit: str, knob: str) -> str:
        return f"{unit}/{knob}"

    def distributions(self) -> dict[str, Any]:
        """Parameter name -> ``optuna.distributions.CategoricalDistribution`` (the whole, fixed space)."""
        from optuna.distributions import CategoricalDistribution

        return {
            self.param_name(u.name, knob): CategoricalDistribution(list(choices))
            for u in self.units
            for knob, choices in u.choices.knob_choices().items()
        }

    def knob_table(self) -> list[tuple[str, str, tuple]]:
        """(unit, knob, choices) for every parameter, in a stable order."""
        return [(u.name, k, c) for u in self.units for k, c in u.choices.knob_choices().items()]

    def cardinality(self) -> float:
        """Number of distinct plans (method-aware: knobs a method ignores do not multiply)."""
        total = 1.0
        for u in self.units:
            c = u.choices
            q = len(c.w_bits) * len(c.a_bits) * len(c.granularities)
            n = 0.0
            for m in c.methods:
                if m == "none":
                    n += 1
                elif m == "quantize":
                    n += q
                elif m == "prune":
                    n += q * len(c.sparsities) * len(c.structures)
                else:
                    n += q * len(c.rank_ratios)
            total *= n
        return total

    def suggest(self, trial: Any) -> QuantPlan:
        """Ask an Optuna trial for every parameter and build the plan."""
        params = {
            self.param_name(u, k): trial.suggest_categorical(self.param_name(u, k), list(c))
            for u, k, c in self.knob_table()
        }
        return self.plan_from_params(params)

    def unit_spec(self, unit: Unit, values: Mapping[str, Any]) -> QuantSpec:
        """The spec of one unit from its knob values (missing knobs take the unit's first choice)."""
        ch = unit.choices.knob_choices()

        def get(knob: str) -> Any:
            return values[knob] if knob in values else ch[knob][0] if knob in ch else None

        method = get("method")
        if method == "none":
            return FP32
        gran = get("granularity")
        spec = self.config.base_spec.with_(
            w_bits=int(get("w_bits")),
            a_bits=int(get("a_bits")),
            granularity=gran,
            group_size=self.config.group_size if gran == "per_group" else None,
            channel_bits=None,
        )
        if method == "prune":
            spec = spec.with_(sparsity=float(get("sparsity")), sparsity_structure=str(get("structure")))
        elif method == "lowrank":
            spec = spec.with_(rank_ratio=float(get("rank_ratio")))
        return spec

    def plan_from_params(self, params: Mapping[str, Any]) -> QuantPlan:
        """The QuantPlan of a parameter dict (``"<unit>/<knob>" -> value``); fixed layers added as given."""
        per_unit: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            unit, _, knob = str(key).rpartition("/")
            if unit not in self._unit_index or knob not in KNOBS:
                raise PlanError(
                    f"parameter {key!r} is not in this space; units: {[u.name for u in self.units]}"
                )
            per_unit.setdefault(unit, {})[knob] = value
        layers: dict[str, QuantSpec] = dict(self.fixed)
        for u in self.units:
            values = per_unit.get(u.name, {})
            for knob, value in values.items():
                allowed = u.choices.knob_choices().get(knob)
                if allowed is None or value not in allowed:
                    raise PlanError(
                        f"{self.param_name(u.name, knob)}={value!r} is not a choice of this space; "
                        f"valid: {list(allowed or ())}"
                    )
            spec = self.unit_spec(u, values)
            for layer in u.layers:
                if not spec.is_identity:
                    layers[layer] = spec
        return QuantPlan(layers)

    def params_from_plan(self, plan: QuantPlan) -> dict[str, Any]:
        """Parameters that rebuild ``plan`` (raises when the plan leaves the space). Ignored knobs take the
        unit's first choice; fixed layers must match."""
        for name, spec in self.fixed.items():
            if plan.get(name) != spec:
                raise PlanError(f"plan changes fixed layer {name!r}: {plan.get(name)} != {spec}")
        params: dict[str, Any] = {}
        for u in self.units:
            specs = {plan.get(layer, FP32) for layer in u.layers}
            if len(specs) > 1:
                raise PlanError(f"plan gives the layers of group {u.name!r} different specs")
            spec = specs.pop()
            ch = u.choices.knob_choices()
            vals: dict[str, Any] = {k: c[0] for k, c in ch.items()}
            if spec.is_identity:
                vals["method"] = "none"
            else:
                vals["method"] = spec.method
                vals.update(w_bits=spec.w_bits, a_bits=spec.a_bits, granularity=spec.granularity)
                if spec.method == "prune":
                    vals.update(sparsity=spec.sparsity, structure=spec.sparsity_structure)
                if spec.method == "lowrank":
                    vals["rank_ratio"] = spec.rank_ratio
            for k, v in vals.items():
                if k not in ch or v not in ch[k]:
                    raise PlanError(
                        f"plan's {self.param_name(u.name, k)}={v!r} is outside this space; valid: "
                        f"{list(ch.get(k, ()))}"
                    )
                params[self.param_name(u.name, k)] = v
        return params

    # -- helpers used by baselines, the RL controller and the explorer ---------------------------------------
    def uniform_plan(self, w_bits: int, a_bits: int = 8, granularity: str = "per_channel") -> QuantPlan:
        """Every unit at the same precision (method quantize); fixed layers as given."""
        layers: dict[str, QuantSpec] = dict(self.fixed)
        for u in self.units:
            spec = self.unit_spec(
                u, {"method": "quantize", "w_bits": w_bits, "a_bits": a_bits, "granularity": granularity}
            )
            for layer in u.layers:
                layers[layer] = spec
        return QuantPlan(layers)

    def with_unit(self, plan: QuantPlan, unit: str, spec: QuantSpec) -> QuantPlan:
        """``plan`` with every layer of ``unit`` set to ``spec`` (float32 ``spec`` removes them)."""
        u = self.units[self._unit_index[unit]]
        layers = {k: v for k, v in plan.items() if k not in u.layers}
        if not spec.is_identity:
            layers.update({layer: spec for layer in u.layers})
        return QuantPlan(layers)

    def unit(self, name: str) -> Unit:
        if name not in self._unit_index:
            raise PlanError(f"unknown unit {name!r}; units: {[u.name for u in self.units]}")
        return self.units[self._unit_index[name]]

    @staticmethod
    def plan_key(plan: QuantPlan) -> str:
        """A stable hash of a plan's content (identical plans share it, whatever parameters produced them)."""
        text = json.dumps(plan.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def describe(self) -> list[dict[str, Any]]:
        """One row per unit: name, layers, and its choices (for tables and the explorer)."""
        return [
            {
                "unit": u.name,
                "layers": list(u.layers),
                **{k: list(v) for k, v in u.choices.knob_choices().items()},
            }
            for u in self.units
        ]

    def random_params(self, rng: np.random.Generator) -> dict[str, Any]:
        """Uniformly random parameters (for screening and tests)."""
        return {self.param_name(u, k): c[int(rng.integers(len(c)))] for u, k, c in self.knob_table()}


def mean_bits_of(plan: QuantPlan, weight_params: Mapping[str, int]) -> float:
    """Weight bits averaged over layers weighted by parameter count (float32 for layers not in the plan)."""
    total = sum(weight_params.values())
    if total == 0:
        return math.nan
    return sum(plan.get(n, FP32).mean_weight_bits() * p for n, p in weight_params.items()) / total


__all__ = [
    "A_BITS",
    "GRANULARITIES",
    "KNOBS",
    "METHODS",
    "RANK_RATIOS",
    "SPARSITIES",
    "STRUCTURES",
    "W_BITS",
    "SearchSpace",
    "SpaceConfig",
    "Unit",
    "UnitChoices",
    "mean_bits_of",
    "residual_groups",
]
