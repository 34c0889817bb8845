"""What a search may choose: the knobs and their default choices, :class:`UnitChoices` (the choices open to one
unit), :class:`SpaceConfig` (the whole space's configuration) and :class:`Unit` (one decision of the search)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workbench.quant.spec import VALID_BITS, PlanError, QuantSpec

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
    ``embeddings``: search Embedding tables too (default False: they stay float32, named in every plan's
    coverage, unless an ``include`` pattern names them; their elements would otherwise dominate the average bits
    of a transformer).
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
    embeddings: bool = False

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
            "embeddings": self.embeddings,
            "exclude": list(self.exclude),
        }


@dataclass(frozen=True)
class Unit:
    """One decision of the search: a layer, or a group of layers sharing a choice."""

    name: str
    layers: tuple[str, ...]
    choices: UnitChoices


__all__ = [
    "A_BITS",
    "GRANULARITIES",
    "KNOBS",
    "METHODS",
    "RANK_RATIOS",
    "SPARSITIES",
    "STRUCTURES",
    "W_BITS",
    "SpaceConfig",
    "Unit",
    "UnitChoices",
]
