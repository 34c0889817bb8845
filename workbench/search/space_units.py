"""How a model and a :class:`~workbench.search.space_config.SpaceConfig` become the units of a
:class:`~workbench.search.space.SearchSpace`: the layers to search, the fixed and the float32 ones, residual and
named groups, and the per-unit choices (every check raises :class:`~workbench.quant.spec.PlanError` naming the
valid values)."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from workbench.quant.fusion import trace_layers
from workbench.quant.introspect import quantizable_layers
from workbench.quant.spec import PlanError, QuantSpec, match_layers
from workbench.search.space_config import SpaceConfig, Unit, UnitChoices


def residual_groups(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Groups of convolutions whose outputs are added together (a block's last conv and its downsample conv),
    found with torch.fx; through BatchNorm layers. Name: ``"<first layer>+"``. Untraceable models: no groups."""
    import torch.fx

    try:
        gm = trace_layers(model)
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


def checked_config(model: nn.Module, config: SpaceConfig | None) -> tuple[SpaceConfig, list[str]]:
    """(the config, default when None; the model's quantizable layers), both checked."""
    config = config or SpaceConfig()
    if not isinstance(config, SpaceConfig):
        raise PlanError(f"config must be a SpaceConfig, got {type(config).__name__}")
    names = quantizable_layers(model)
    if not names:
        raise PlanError(
            f"{type(model).__name__} has no quantizable layers (Conv1d / Conv2d / Linear / Embedding) to search"
        )
    if isinstance(config.group_size, bool) or not isinstance(config.group_size, int) or config.group_size < 1:
        raise PlanError(f"group_size={config.group_size!r} must be an int >= 1 (weights per scale)")
    return config, names


def fixed_and_taken(
    config: SpaceConfig, names: Sequence[str], embeddings: Sequence[str] = ()
) -> tuple[dict[str, QuantSpec], set[str]]:
    """(fixed layer -> spec, layers no unit takes: skipped, fixed, left out by include / exclude, or the
    ``embeddings`` tables unless ``config.embeddings`` or an ``include`` pattern names them)."""
    known = set(names)
    for what, values in (("skip", config.skip), ("fixed", tuple(config.fixed))):
        unknown = sorted(set(values) - known)
        if unknown:
            raise PlanError(f"{what} names unknown layer(s) {unknown}; valid layers: {names}")
    both = sorted(set(config.skip) & set(config.fixed))
    if both:
        raise PlanError(f"layer(s) {both} are both skipped and fixed; choose one")
    fixed: dict[str, QuantSpec] = {n: _coerce_spec(s, n) for n, s in config.fixed.items()}
    taken = set(config.skip) | set(fixed)
    if config.include is not None or config.exclude:  # unselected layers are left float32, like skip
        taken |= known - set(match_layers(names, config.include, config.exclude)) - set(fixed)
    if not config.embeddings and embeddings:
        patterns = config.include or ()
        asked = {n for n in embeddings if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
        taken |= set(embeddings) - asked - set(fixed)
    return fixed, taken


def config_groups(model: nn.Module, config: SpaceConfig) -> Mapping[str, Sequence[str]]:
    """The config's groups: :func:`residual_groups` for ``"residual"``, the mapping as given, or none."""
    groups = residual_groups(model) if config.groups == "residual" else (config.groups or {})
    if isinstance(groups, str):
        raise PlanError(f"groups={groups!r} not understood; pass 'residual' or a mapping name -> layers")
    return groups


def group_members(
    groups: Mapping[str, Sequence[str]], names: Sequence[str], taken: set[str]
) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """(group -> its layers, layer -> its group), each group checked against the layers and the others."""
    known = set(names)
    grouped: dict[str, str] = {}
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
    return group_units, grouped


def build_units(
    config: SpaceConfig,
    default: UnitChoices,
    names: Sequence[str],
    taken: set[str],
    group_units: Mapping[str, tuple[str, ...]],
    grouped: Mapping[str, str],
) -> tuple[Unit, ...]:
    """The units in forward (definition) order of their first layer, each with its (overridden) choices."""
    known = set(names)
    unit_names = set(group_units)
    bad_over = sorted(set(config.overrides) - unit_names - (known - set(grouped) - taken))
    if bad_over:
        valid = sorted(unit_names | (known - set(grouped) - taken))
        raise PlanError(f"overrides name unknown unit(s) {bad_over}; valid units: {valid}")
    units: list[Unit] = []
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
    return tuple(units)


__all__ = [
    "build_units",
    "checked_config",
    "config_groups",
    "fixed_and_taken",
    "group_members",
    "residual_groups",
]
