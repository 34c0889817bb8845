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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from workbench.quant.introspect import quantizable_layers
from workbench.quant.spec import FP32, VALID_BITS, PlanError, QuantPlan, QuantSpec, match_layers

W_BITS: tuple[int, ...] = (2, 3, 4, 6, 8, 16)
A_BITS: tuple[int, ...] = (4, 6, 8, 16)
GRANULARITIES: tuple[str, ...] = ("per_tensor", "per_channel", "per_group")
METHODS: tuple[str, ...] = ("quantize", "prune", "lowrank", "none")
SPARSITIES: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)
STRUCTURES: tuple[str, ...] = ("unstructured", "channel")
RANK_RATIOS: tuple[float, ...] = (0.25, 0.5, 0.75)

KNOBS: tuple[str, ...] = ("method", "w_bits", "a_bits", "granularity", "sparsity", "structure", "rank_ratio")


def _tuple(value: Any, name: str) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        value = (value,)
    out = tuple(dict.fromkeys(value))
    if not out:
        raise PlanError(f"{name} must not be empty")
    return out


def _check_subset(values: tuple, valid: tuple, name: str) -> tuple:
    bad = [v for v in values if v not in valid]
    if bad:
        raise PlanError(f"{name} {bad} not supported; valid {name}: {list(valid)}")
    return values


@dataclass(frozen=True)
class UnitChoices:
    """The choices open to one unit (layer or group). Every tuple is non-empty."""

    w_bits: tuple[int, ...] = W_BITS
    a_bits: tuple[int, ...] = (8,)
    granularities: tuple[str, ...] = ("per_channel",)
    methods: tuple[str, ...] = ("quantize",)
    sparsities: tuple[float, ...] = SPARSITIES
    structures: tuple[str, ...] = STRUCTURES
    rank_ratios: tuple[float, ...] = RANK_RATIOS

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "w_bits", _check_subset(_tuple(self.w_bits, "w_bits"), VALID_BITS, "w_bits"))
        set_(self, "a_bits", _check_subset(_tuple(self.a_bits, "a_bits"), VALID_BITS, "a_bits"))
        set_(
            self,
            "granularities",
            _check_subset(_tuple(self.granularities, "granularities"), GRANULARITIES, "granularities"),
        )
        set_(self, "methods", _check_subset(_tuple(self.methods, "methods"), METHODS, "methods"))
        set_(
            self, "structures", _check_subset(_tuple(self.structures, "structures"), STRUCTURES, "structures")
        )
        sp = tuple(float(s) for s in _tuple(self.sparsities, "sparsities"))
        if any(not (0.0 < s < 1.0) for s in sp):
            raise PlanError(f"sparsities {list(sp)} must lie in (0, 1)")
        set_(self, "sparsities", sp)
        rr = tuple(float(r) for r in _tuple(self.rank_ratios, "rank_ratios"))
        if any(not (0.0 < r <= 1.0) for r in rr):
            raise PlanError(f"rank_ratios {list(rr)} must lie in (0, 1]")
        set_(self, "rank_ratios", rr)

    def knob_choices(self) -> dict[str, tuple]:
        """Knob -> choices, only the knobs this unit's methods use."""
        out: dict[str, tuple] = {
            "method": self.methods,
            "w_bits": self.w_bits,
            "a_bits": self.a_bits,
            "granularity": self.granularities,
        }
        if "prune" in self.methods:
            out["sparsity"] = self.sparsities
            out["structure"] = self.structures
        if "lowrank" in self.methods:
            out["rank_ratio"] = self.rank_ratios
        return out

    def with_(self, **changes: Any) -> UnitChoices:
        from dataclasses import replace

        return replace(self, **changes)


@dataclass(frozen=True)
class SpaceConfig:
    """What a search may choose. Defaults: every weight width of the issue, 8-bit activations, per-channel
    quantization only (the space the accuracy predictor was trained on).

    ``groups``: name -> layers that share one choice (``"residual"`` as the whole mapping groups each
    residual block's output convolution with its downsample partner, see :func:`residual_groups`).
    ``skip``: layers left in float32. ``fixed``: layer -> spec (or a mapping of spec fields) kept as given.
    ``include`` / ``exclude``: glob patterns on layer names (:func:`workbench.quant.spec.match_layers`, e.g.
    ``("*.intermediate.dense", "*.attention.*")`` / ``("pooler*",)``): only layers matched by an ``include``
    pattern (every layer when None) and by no ``exclude`` pattern are searched, the others stay float32 like
    ``skip`` (``fixed`` layers are kept whatever the patterns say). A pattern matching no layer is an error.
    ``overrides``: layer or group -> dict of :class:`UnitChoices` fields narrowing that unit's choices.
    ``group_size``: weights per scale of ``per_group`` granularity. ``base_spec``: the observer, symmetry ...
    of every searched spec (its bits / granularity are replaced by the search's).
    """

    w_bits: tuple[int, ...] = W_BITS
    a_bits: tuple[int, ...] = (8,)
    granularities: tuple[str, ...] = ("per_channel",)
    methods: tuple[str, ...] = ("quantize",)
    sparsities: tuple[float, ...] = SPARSITIES
    structures: tuple[str, ...] = STRUCTURES
    rank_ratios: tuple[float, ...] = RANK_RATIOS
    groups: Mapping[str, Sequence[str]] | str | None = None
    skip: tuple[str, ...] = ()
    fixed: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    group_size: int = 16
    base_spec: QuantSpec = field(default_factory=QuantSpec)
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if value is None and name == "include":
                continue
            items = (value,) if isinstance(value, str) else tuple(value)
            if any(not isinstance(p, str) or not p for p in items):
                raise PlanError(f"{name}={value!r} must be glob patterns on layer names (non-empty strings)")
            object.__setattr__(self, name, items)

    def default_choices(self) -> UnitChoices:
        return UnitChoices(
            w_bits=self.w_bits,
            a_bits=self.a_bits,
            granularities=self.granularities,
            methods=self.methods,
            sparsities=self.sparsities,
            structures=self.structures,
            rank_ratios=self.rank_ratios,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "w_bits": list(self.w_bits),
            "a_bits": list(self.a_bits),
            "granularities": list(self.granularities),
            "methods": list(self.methods),
            "sparsities": list(self.sparsities),
            "structures": list(self.structures),
            "rank_ratios": list(self.rank_ratios),
            "groups": self.groups
            if isinstance(self.groups, str) or self.groups is None
            else {k: list(v) for k, v in self.groups.items()},
            "skip": list(self.skip),
            "fixed": {
                k: (v.to_dict() if isinstance(v, QuantSpec) else dict(v)) for k, v in self.fixed.items()
            },
            "overrides": {
                k: {kk: (list(vv) if isinstance(vv, (list, tuple)) else vv) for kk, vv in v.items()}
                for k, v in self.overrides.items()
            },
            "group_size": self.group_size,
            "base_spec": self.base_spec.to_dict(),
            "include": None if self.include is None else list(self.include),
            "exclude": list(self.exclude),
        }


@dataclass(frozen=True)
class Unit:
    """One decision of the search: a layer, or a group of layers sharing a choice."""

    name: str
    layers: tuple[str, ...]
    choices: UnitChoices


def residual_groups(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Groups of convolutions whose outputs are added together (a block's last conv and its downsample conv),
    found with torch.fx; through BatchNorm layers. Name: ``"<first layer>+"``. Untraceable models: no groups."""
    import torch.fx

    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - grouping is an optional convenience
        return {}
    modules = dict(model.named_modules())
    quantizable = set(quantizable_layers(model))

    def source_layer(node: Any) -> str | None:
        seen = 0
        while isinstance(node, torch.fx.Node) and seen < 8:
            if node.op == "call_module":
                if node.target in quantizable:
                    return str(node.target)
                if isinstance(modules.get(node.target), (nn.BatchNorm2d, nn.BatchNorm1d, nn.Identity)):
                    node = node.args[0] if node.args else None
                    seen += 1
                    continue
            return None
        return None

    import operator

    groups: dict[str, tuple[str, ...]] = {}
    for node in gm.graph.nodes:
        is_add = (node.op == "call_function" and node.target in (operator.add, operator.iadd)) or (
            node.op == "call_method" and node.target in ("add", "add_")
        )
        if not is_add:
            continue
        srcs = [s for s in (source_layer(a) for a in node.args) if s is not None]
        if len(srcs) >= 2:
            members = tuple(dict.fromkeys(srcs))
            groups[f"{members[0]}+"] = members
    return groups


def _coerce_spec(value: Any, name: str) -> QuantSpec:
    if isinstance(value, QuantSpec):
        return value
    if isinstance(value, Mapping):
        return QuantSpec.from_dict(value)
    raise PlanError(f"fixed[{name!r}] must be a QuantSpec or a mapping of spec fields, got {value!r}")


class SearchSpace:
    """Units, their choices, and the mapping between Optuna parameters and QuantPlans."""

    def __init__(self, model: nn.Module, config: SpaceConfig | None = None) -> None:
        config = config or SpaceConfig()
        if not isinstance(config, SpaceConfig):
            raise PlanError(f"config must be a SpaceConfig, got {type(config).__name__}")
        names = quantizable_layers(model)
        if not names:
            raise PlanError(
                f"{type(model).__name__} has no quantizable layers (Conv1d / Conv2d / Linear / Embedding) to search"
            )
        if (
            isinstance(config.group_size, bool)
            or not isinstance(config.group_size, int)
            or config.group_size < 1
        ):
            raise PlanError(f"group_size={config.group_size!r} must be an int >= 1 (weights per scale)")
        self.config = config
        self.layers: tuple[str, ...] = tuple(names)
        modules = dict(model.named_modules())
        self.out_channels = {n: int(modules[n].weight.shape[0]) for n in names}
        known = set(names)
        for what, values in (("skip", config.skip), ("fixed", tuple(config.fixed))):
            unknown = sorted(set(values) - known)
            if unknown:
                raise PlanError(f"{what} names unknown layer(s) {unknown}; valid layers: {names}")
        both = sorted(set(config.skip) & set(config.fixed))
        if both:
            raise PlanError(f"layer(s) {both} are both skipped and fixed; choose one")
        self.fixed: dict[str, QuantSpec] = {n: _coerce_spec(s, n) for n, s in config.fixed.items()}
        taken = set(config.skip) | set(self.fixed)
        if config.include is not None or config.exclude:  # unselected layers are left float32, like skip
            taken |= known - set(match_layers(names, config.include, config.exclude)) - set(self.fixed)
        groups = residual_groups(model) if config.groups == "residual" else (config.groups or {})
        if isinstance(groups, str):
            raise PlanError(f"groups={groups!r} not understood; pass 'residual' or a mapping name -> layers")
        grouped: dict[str, str] = {}
        units: list[Unit] = []
        default = config.default_choices()
        group_units: dict[str, tuple[str, ...]] = {}
        for gname, members in groups.items():
            members = tuple(members)
            if len(members) < 2:
                raise PlanError(f"group {gname!r} needs at least two layers, got {list(members)}")
            unknown = sorted(set(members) - known)
            if unknown:
                raise PlanError(f"group {gname!r} names unknown layer(s) {unknown}; valid layers: {names}")
            clash = sorted(set(members) & taken)
            if clash:
                raise PlanError(f"group {gname!r} contains skipped / fixed layer(s) {clash}")
            again = sorted(m for m in members if m in grouped)
            if again:
                raise PlanError(f"layer(s) {again} belong to more than one group")
            if gname in known and gname not in members:
                raise PlanError(f"group name {gname!r} is also a layer name; rename the group")
            for m in members:
                grouped[m] = gname
            group_units[gname] = members
        unit_names = set(group_units)
        bad_over = sorted(set(config.overrides) - unit_names - (known - set(grouped) - taken))
        if bad_over:
            valid = sorted(unit_names | (known - set(grouped) - taken))
            raise PlanError(f"overrides name unknown unit(s) {bad_over}; valid units: {valid}")
        done: set[str] = set()
        for n in names:  # units in forward (definition) order of their first layer
            if n in taken:
                continue
            uname = grouped.get(n, n)
            if uname in done:
                continue
            done.add(uname)
            choices = default
            if uname in config.overrides:
                try:
                    choices = default.with_(**dict(config.overrides[uname]))
                except TypeError as e:
                    raise PlanError(
                        f"overrides[{uname!r}] has an unknown field ({e}); valid fields: "
                        f"{list(UnitChoices.__dataclass_fields__)}"
                    ) from e
            members = group_units.get(uname, (n,))
            units.append(Unit(uname, members, choices))
        if not units:
            raise PlanError(
                "the search space is empty: every layer is skipped or fixed; leave at least one layer free"
            )
        self.units: tuple[Unit, ...] = tuple(units)
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
