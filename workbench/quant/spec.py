"""QuantSpec and QuantPlan: what precision each layer gets, validated, JSON round-trip, summaries.

A :class:`QuantPlan` maps layer names (module paths) to :class:`QuantSpec` and is the unit that moves between
every stage of the workbench. It serialises to readable JSON::

    {"conv1": {"w_bits": 4, "a_bits": 8, "granularity": "per_channel", ...}, ...}

Quantizable layers are Conv1d, Conv2d, Linear and Embedding (see :mod:`workbench.quant.introspect`). A *weight-only*
spec leaves activations in float: ``a_bits=32`` (shorthand ``uniform:w4``); an Embedding is always weight-only
(its input is token ids; the activation fields of its spec are ignored). Layers can be chosen by glob patterns on
their module paths (:func:`match_layers`): ``include`` / ``exclude`` arguments of :meth:`QuantPlan.uniform`,
:meth:`QuantPlan.from_shorthand`, :meth:`QuantPlan.select`, the pattern keys of :meth:`QuantPlan.from_patterns`,
and ``;include=`` / ``;exclude=`` clauses of a shorthand.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import math
import operator
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from torch import nn

from workbench.compress import PRUNE_STRUCTURES, low_rank_macs_ratio, num_pruned, rank_for
from workbench.quant.introspect import (
    QUANTIZABLE_TYPES,
    WEIGHT_ONLY_TYPES,
    LayerCost,
    layer_costs,
    quantizable_layers,
    unsupported_reason,
)

INT_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
FLOAT_BITS: tuple[int, ...] = (16, 32)
VALID_BITS: tuple[int, ...] = INT_BITS + FLOAT_BITS
GRANULARITIES: tuple[str, ...] = ("per_tensor", "per_channel", "per_group")
ACT_GRANULARITIES: tuple[str, ...] = ("per_tensor", "per_channel")
OBSERVERS: tuple[str, ...] = ("minmax", "percentile", "mse")
FLOAT16_FORMATS: tuple[str, ...] = ("bfloat16", "float16")
METHODS: tuple[str, ...] = ("none", "quantize", "prune", "lowrank")  # values of QuantSpec.method

SCALE_BITS = 32  # scales are stored as float32
ZERO_POINT_BITS = 8  # zero points of <= 8-bit integer tensors fit in one byte
ACT_QPARAM_BITS = 32 + 32  # one float32 scale and one int32 zero point per activation channel / tensor


class PlanError(ValueError):
    """A plan, spec or model that the quantization core cannot use. The message names the bad value."""


def _choices(values) -> str:
    return ", ".join(repr(v) for v in values)


def _channel_bits_tuple(value: Any) -> tuple[int, ...]:
    """``channel_bits`` as a tuple of Python ints: a list / tuple (or other sequence) of integers, numpy and
    0-d torch integers included; anything else (a bare number, a string, a mapping, floats, bools, None
    entries) raises :class:`PlanError` naming the field."""
    bad = PlanError(f"channel_bits must be a list of integers (one per output channel), got {value!r}")
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise bad
    out = []
    for b in value:
        if isinstance(b, bool):
            raise bad
        try:
            out.append(operator.index(b))
        except TypeError:
            raise bad from None
    return tuple(out)


@dataclass(frozen=True)
class QuantSpec:
    """How one layer is quantized.

    Bits: 2, 3, 4, 5, 6, 8 are integer grids; 16 is a float16/bfloat16 cast (``float16_format``); 32 leaves the
    tensor in float32, so ``a_bits=32`` is a weight-only spec (activations stay float, no activation quantizer).
    ``granularity`` applies to weights (per output channel = dim 0; for an Embedding ``[num_embeddings, dim]``
    one scale per embedding row); ``group_size`` splits each output channel's (row's) flattened fan-in (the
    embedding dim) into groups with their own scale. ``channel_bits`` gives every output channel
    its own integer bit width (mixed precision inside a layer); it needs per_channel or per_group granularity.
    Activations (the layer's input) use ``a_granularity`` (per_tensor, or per_channel along dim 1), a static range
    found at calibration, or a dynamic one recomputed from every batch when ``a_dynamic`` is true.

    Besides quantization a layer may use one compression method (see :mod:`workbench.compress`), applied to the
    (BatchNorm-folded) float weight before its quantization: ``sparsity`` in [0, 1) prunes by magnitude, either
    single weights (``sparsity_structure='unstructured'``) or whole output channels (``'channel'``);
    ``rank_ratio`` in (0, 1] replaces the weight ``[out, fan_in]`` by a truncated-SVD product ``A @ B`` of rank
    ``max(1, round(rank_ratio * min(out, fan_in)))``, both factors quantized with this spec. The two methods
    exclude each other and ``channel_bits``.
    """

    w_bits: int = 8
    a_bits: int = 8
    granularity: str = "per_channel"
    group_size: int | None = None
    w_symmetric: bool = True
    a_symmetric: bool = False
    w_observer: str = "minmax"
    a_observer: str = "minmax"
    a_granularity: str = "per_tensor"
    a_dynamic: bool = False
    percentile: float = 99.99
    float16_format: str = "bfloat16"
    channel_bits: tuple[int, ...] | None = None
    sparsity: float = 0.0
    sparsity_structure: str = "unstructured"
    rank_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.channel_bits is not None:
            object.__setattr__(self, "channel_bits", _channel_bits_tuple(self.channel_bits))
        self.validate()

    # -- validation ---------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`PlanError` naming the first bad field and its valid choices."""
        for name in ("w_bits", "a_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value not in VALID_BITS:
                raise PlanError(f"{name}={value!r} is not supported; valid bits: {_choices(VALID_BITS)}")
        if self.granularity not in GRANULARITIES:
            raise PlanError(
                f"granularity={self.granularity!r} is not valid; choose one of {_choices(GRANULARITIES)}"
            )
        if self.a_granularity not in ACT_GRANULARITIES:
            raise PlanError(
                f"a_granularity={self.a_granularity!r} is not valid; choose one of {_choices(ACT_GRANULARITIES)}"
            )
        if self.granularity == "per_group":
            if (
                not isinstance(self.group_size, int)
                or isinstance(self.group_size, bool)
                or self.group_size < 1
            ):
                raise PlanError(
                    f"granularity='per_group' needs group_size >= 1, got group_size={self.group_size!r}"
                )
        elif self.group_size is not None:
            raise PlanError(
                f"group_size={self.group_size!r} is only used with granularity='per_group' (got {self.granularity!r})"
            )
        for name in ("w_symmetric", "a_symmetric", "a_dynamic"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise PlanError(
                    f"{name}={value!r} must be true or false (a JSON boolean), not {type(value).__name__}"
                )
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)):
            raise PlanError(f"percentile={self.percentile!r} must be a number in (50, 100]")
        for name in ("w_observer", "a_observer"):
            value = getattr(self, name)
            if value not in OBSERVERS:
                raise PlanError(f"{name}={value!r} is not valid; choose one of {_choices(OBSERVERS)}")
        if not (50.0 < self.percentile <= 100.0):  # no float(): a huge JSON integer would overflow
            raise PlanError(f"percentile={self.percentile!r} must lie in (50, 100]")
        if self.float16_format not in FLOAT16_FORMATS:
            raise PlanError(
                f"float16_format={self.float16_format!r} is not valid; choose one of {_choices(FLOAT16_FORMATS)}"
            )
        if self.channel_bits is not None:
            if self.granularity == "per_tensor":
                raise PlanError(
                    "channel_bits needs granularity 'per_channel' or 'per_group', got 'per_tensor'"
                )
            bad = sorted({b for b in self.channel_bits if b not in INT_BITS})
            if bad:
                raise PlanError(
                    f"channel_bits contains {bad}; per-channel bits must be integer bits {INT_BITS}"
                )
            if len(self.channel_bits) == 0:
                raise PlanError("channel_bits must not be empty (one entry per output channel)")
        if (
            isinstance(self.sparsity, bool)
            or not isinstance(self.sparsity, (int, float))
            or not (0.0 <= self.sparsity < 1.0)
        ):
            raise PlanError(f"sparsity={self.sparsity!r} must be a number in [0, 1) (0 = no pruning)")
        if self.sparsity_structure not in PRUNE_STRUCTURES:
            raise PlanError(
                f"sparsity_structure={self.sparsity_structure!r} is not valid; "
                f"choose one of {_choices(PRUNE_STRUCTURES)}"
            )
        if self.rank_ratio is not None and (
            isinstance(self.rank_ratio, bool)
            or not isinstance(self.rank_ratio, (int, float))
            or not (0.0 < self.rank_ratio <= 1.0)
        ):
            raise PlanError(
                f"rank_ratio={self.rank_ratio!r} must be null (no factorisation) or a number in (0, 1]"
            )
        if self.sparsity > 0 and self.rank_ratio is not None:
            raise PlanError(
                f"sparsity={self.sparsity!r} and rank_ratio={self.rank_ratio!r} are both set; choose one method "
                f"per layer (methods: {_choices(METHODS[2:])})"
            )
        if self.channel_bits is not None and (self.sparsity > 0 or self.rank_ratio is not None):
            raise PlanError(
                f"channel_bits cannot be combined with {self.method} (sparsity={self.sparsity!r}, "
                f"rank_ratio={self.rank_ratio!r}); use a single w_bits for pruned or low-rank layers"
            )

    # -- derived ------------------------------------------------------------------------------------------
    @property
    def is_identity(self) -> bool:
        """True when neither weights nor activations are touched (a float32 layer, not pruned or factorised)."""
        return (
            self.w_bits == 32
            and self.a_bits == 32
            and self.channel_bits is None
            and self.sparsity == 0
            and self.rank_ratio is None
        )

    @property
    def is_weight_only(self) -> bool:
        """True when the weight is transformed but activations stay float32 (``a_bits=32``)."""
        return self.a_bits == 32 and self.transforms_weight

    @property
    def method(self) -> str:
        """``'lowrank'``, ``'prune'``, ``'none'`` (identity) or ``'quantize'`` (one of :data:`METHODS`)."""
        if self.rank_ratio is not None:
            return "lowrank"
        if self.sparsity > 0:
            return "prune"
        return "none" if self.is_identity else "quantize"

    @property
    def transforms_weight(self) -> bool:
        """True when the layer's weight is changed (quantized, pruned or factorised): its BatchNorm is folded."""
        return (
            self.w_bits < 32
            or self.channel_bits is not None
            or self.sparsity > 0
            or self.rank_ratio is not None
        )

    def mean_weight_bits(self) -> float:
        """Weight bits averaged over output channels (equals ``w_bits`` without ``channel_bits``)."""
        if self.channel_bits is None:
            return float(self.w_bits)
        return sum(self.channel_bits) / len(self.channel_bits)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["channel_bits"] is not None:
            d["channel_bits"] = list(d["channel_bits"])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QuantSpec:
        if not isinstance(d, Mapping):
            raise PlanError(f"a spec must be a mapping of fields, got {type(d).__name__}: {d!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted((k for k in d if k not in known), key=repr)  # keys of mixed types sort too
        if unknown:
            raise PlanError(f"unknown spec field(s) {unknown}; valid fields: {sorted(known)}")
        kw = dict(d)
        cb = kw.get("channel_bits")
        if cb is not None:
            if not isinstance(cb, (list, tuple)) or any(
                isinstance(b, bool) or not isinstance(b, int) for b in cb
            ):
                raise PlanError(
                    f"channel_bits must be a list of integers (one per output channel), got {cb!r}"
                )
            kw["channel_bits"] = tuple(cb)
        return cls(**kw)

    def with_(self, **changes: Any) -> QuantSpec:
        """A copy with some fields changed (validated); an unknown field name raises :class:`PlanError`."""
        known = {f.name for f in fields(self)}
        unknown = sorted(k for k in changes if k not in known)
        if unknown:
            raise PlanError(f"unknown spec field(s) {unknown}; valid fields: {sorted(known)}")
        return replace(self, **changes)


FP32 = QuantSpec(w_bits=32, a_bits=32, granularity="per_tensor")


@dataclass(frozen=True)
class PlanSummary:
    """Size and cost of a plan applied to a model.

    ``avg_weight_bits`` / ``avg_act_bits``: bits of each quantizable layer's weights / input activations,
    averaged with the layer's weight-parameter count as weight. ``size_bytes``: inference state of the whole
    model (packed codes, float32 scales, 8-bit zero points, activation ranges, BatchNorm folded into quantized
    convolutions, every other parameter and buffer at its dtype); ``fp32_size_bytes`` the float model's state.
    ``bops``: bit operations per input sample, sum over layers of MACs x weight bits x activation bits (MACs of
    pruned layers scaled by their kept fraction, of low-rank layers by the factorised / dense MAC ratio).
    ``weight_bytes``: storage of the quantizable layers' weights alone (codes, masks, scales, zero points, low-rank
    factors; layers not in the plan at float32); ``fp32_weight_bytes`` the same weights at float32.
    ``covered_params``: weight elements of the layers the plan changes (non-identity specs; a tied weight counted
    once), ``total_params`` every parameter element of the model, ``covered_fraction`` their ratio: the share of
    the model that the bit figures are about. Embedding layers count in the weight figures like any layer, and
    in the activation average not at all (their input is token ids; ``avg_act_bits`` is 32 without such layers).
    """

    avg_weight_bits: float
    avg_act_bits: float
    size_bytes: int
    fp32_size_bytes: int
    compression: float
    bops: int
    fp32_bops: int
    quantized_layers: int
    total_layers: int
    weight_bytes: int
    fp32_weight_bytes: int
    covered_params: int
    total_params: int
    covered_fraction: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QuantPlan:
    """Layer name -> QuantSpec. Layers not in the plan stay float32."""

    layers: Mapping[str, QuantSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clean: dict[str, QuantSpec] = {}
        try:
            layers = dict(self.layers)
        except (TypeError, ValueError):
            raise PlanError(
                f"a plan's layers must be a mapping of layer name -> spec, got {type(self.layers).__name__}"
            ) from None
        for name, spec in layers.items():
            if not isinstance(name, str) or not name:
                raise PlanError(f"layer names must be non-empty module paths, got {name!r}")
            if isinstance(spec, Mapping):
                spec = QuantSpec.from_dict(spec)
            if not isinstance(spec, QuantSpec):
                raise PlanError(
                    f"layer {name!r}: expected a QuantSpec or a mapping, got {type(spec).__name__}"
                )
            clean[name] = spec
        object.__setattr__(self, "layers", clean)

    # -- mapping-like access ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> QuantSpec:
        return self.layers[name]

    def __contains__(self, name: object) -> bool:
        return name in self.layers

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def items(self):
        return self.layers.items()

    def get(self, name: str, default: QuantSpec | None = None) -> QuantSpec | None:
        return self.layers.get(name, default)

    def with_layer(self, name: str, spec: QuantSpec) -> QuantPlan:
        """A new plan with one layer's spec replaced or added."""
        return QuantPlan({**self.layers, name: spec})

    # -- constructors -------------------------------------------------------------------------------------
    @classmethod
    def uniform(
        cls,
        model: nn.Module,
        spec: QuantSpec,
        *,
        skip: tuple[str, ...] = (),
        include: Iterable[str] | str | None = None,
        exclude: Iterable[str] | str | None = None,
    ) -> QuantPlan:
        """The same spec for every quantizable layer of ``model`` selected by the glob patterns ``include`` (all
        layers when None) and ``exclude`` (see :func:`match_layers`), except the exact names in ``skip``."""
        names = _quantizable_or_raise(model)
        unknown = sorted(set(skip) - set(names))
        if unknown:
            raise PlanError(f"skip names unknown layers {unknown}; valid layers: {_listing(names)}")
        selected = match_layers(names, include, exclude)
        return cls({n: spec for n in selected if n not in skip})

    @classmethod
    def from_shorthand(
        cls,
        text: str,
        model: nn.Module,
        *,
        include: Iterable[str] | str | None = None,
        exclude: Iterable[str] | str | None = None,
    ) -> QuantPlan:
        """A uniform plan from a shorthand (grammar: :func:`parse_shorthand`), e.g. ``uniform:w4a8:per_channel``,
        ``uniform:w4:per_group:g32`` (weight-only) or, with layer selection,
        ``uniform:w4:per_channel;include=*.dense,*.query;exclude=pooler*``. Patterns given here are added to those
        of the text's clauses."""
        spec_text, inc, exc = split_shorthand(text)
        inc = [*inc, *_patterns(include, "include")]
        exc = [*exc, *_patterns(exclude, "exclude")]
        return cls.uniform(model, parse_shorthand(spec_text), include=inc or None, exclude=exc)

    @classmethod
    def from_patterns(
        cls,
        model: nn.Module,
        specs: Mapping[str, QuantSpec | Mapping[str, Any]],
        *,
        exclude: Iterable[str] | str | None = None,
    ) -> QuantPlan:
        """A plan from glob pattern -> spec (``{"*": w8, "*.intermediate.dense": w4, "embeddings.*": w4}``): each
        quantizable layer takes the spec of the *last* pattern that matches it; layers matching no pattern, or
        one of ``exclude``, stay float32. Every pattern must match at least one layer."""
        names = _quantizable_or_raise(model)
        if not isinstance(specs, Mapping) or not specs:
            raise PlanError(f"specs must be a non-empty mapping of glob pattern -> spec, got {specs!r}")
        excluded = set(names) - set(match_layers(names, None, exclude)) if exclude is not None else set()
        layers: dict[str, QuantSpec] = {}
        for pattern, spec in specs.items():
            spec = QuantSpec.from_dict(spec) if isinstance(spec, Mapping) else spec
            if not isinstance(spec, QuantSpec):
                raise PlanError(f"pattern {pattern!r}: expected a QuantSpec or a mapping, got {spec!r}")
            for n in match_layers(names, [pattern], None):
                if n not in excluded:
                    layers[n] = spec
        return cls({n: layers[n] for n in names if n in layers})  # model order

    def select(
        self,
        model: nn.Module,
        *,
        include: Iterable[str] | str | None = None,
        exclude: Iterable[str] | str | None = None,
    ) -> QuantPlan:
        """This plan restricted to the layers selected by the patterns (the others are dropped: float32)."""
        keep = set(match_layers(_quantizable_or_raise(model), include, exclude))
        return QuantPlan({n: s for n, s in self.layers.items() if n in keep})

    # -- JSON ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: spec.to_dict() for name, spec in self.layers.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QuantPlan:
        if not isinstance(d, Mapping):
            raise PlanError(f"a plan must be a JSON object of layer -> spec, got {type(d).__name__}")
        return cls({name: QuantSpec.from_dict(spec) for name, spec in d.items()})

    def to_json(self, *, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> QuantPlan:
        if not isinstance(text, (str, bytes, bytearray)):
            raise PlanError(f"a plan's JSON must be text, got {type(text).__name__}")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"plan is not valid JSON: {e}") from e
        except UnicodeDecodeError as e:
            raise PlanError(f"plan is not valid JSON: not UTF-8 text ({e})") from e
        except RecursionError:
            raise PlanError("plan is not valid JSON: nested too deeply") from None
        try:
            return cls.from_dict(data)
        except RecursionError:  # a deeply nested (valid) JSON value in a spec field: its repr overflows
            raise PlanError("plan JSON is nested too deeply to be a plan (layer -> spec fields)") from None

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the plan as JSON; refuses to replace an existing file unless ``overwrite``."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> QuantPlan:
        """A plan from a JSON file; a file that cannot be read or is no plan raises :class:`PlanError` naming
        the file (a missing one FileNotFoundError)."""
        path = Path(path)
        try:
            is_file = path.is_file()
        except (OSError, ValueError):  # a name too long for the file system, ...
            is_file = False
        if not is_file:
            raise FileNotFoundError(f"plan file {path} does not exist")
        try:
            text = path.read_bytes()
        except OSError as e:
            raise PlanError(f"plan file {path} cannot be read: {e.strerror or e}") from e
        try:
            return cls.from_json(text)
        except PlanError as e:
            raise PlanError(f"plan file {path}: {e}") from e

    # -- validation and summaries -------------------------------------------------------------------------
    def validate(self, model: nn.Module) -> None:
        """Check every layer name exists and is quantizable, and per-channel bit vectors fit the layer.

        A name that is not a module of ``model`` is reported with its nearest layer names; a module of an
        unsupported type (a LayerNorm, a subclass with its own forward ...) with its type and the supported types.
        """
        names = _quantizable_or_raise(model)
        modules = dict(model.named_modules())
        known = set(names)
        wrong_type = [n for n in self.layers if n not in known and n in modules]
        if wrong_type:
            details = "; ".join(f"layer {n!r} is a {unsupported_reason(modules[n])}" for n in wrong_type)
            raise PlanError(f"plan names layer(s) that cannot be quantized: {details}")
        unknown = [n for n in self.layers if n not in known]
        if unknown:
            near = sorted({m for n in unknown for m in _nearest(n, names)})
            raise PlanError(
                f"plan names unknown layer(s) {unknown}; valid layers: {_listing(names)}; nearest: {near}"
            )
        for name, spec in self.layers.items():
            if spec.channel_bits is not None:
                out_ch = modules[name].weight.shape[0]
                if len(spec.channel_bits) != out_ch:
                    raise PlanError(
                        f"layer {name!r}: channel_bits has {len(spec.channel_bits)} entries, "
                        f"the layer has {out_ch} output channels"
                    )

    def summary(self, model: nn.Module, example_input) -> PlanSummary:
        """Average bits, size in bytes (scales, zero points, folded BatchNorm accounted for), BOPs."""
        self.validate(model)
        costs = layer_costs(model, example_input)
        return summarize(self, model, costs)


def _state_bits(module: nn.Module) -> int:
    """Storage bits of a module's own parameters and buffers (not its children's)."""
    tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    return sum(t.numel() * t.element_size() * 8 for t in tensors)


def folded_pairs(plan: QuantPlan, model: nn.Module) -> list[tuple[str, str]]:
    """The (conv, bn) pairs :func:`quantize_model` folds for this plan: BatchNorm after a conv whose weight is
    quantized, pruned or factorised (:attr:`QuantSpec.transforms_weight`)."""
    from workbench.quant.swap import conv_bn_pairs  # local: swap imports this module

    quantized = {n for n, s in plan.items() if s.transforms_weight}
    return [(c, b) for c, b in conv_bn_pairs(model) if c in quantized]


def summarize(
    plan: QuantPlan,
    model: nn.Module,
    costs: Mapping[str, LayerCost],
    *,
    bn_pairs: list[tuple[str, str]] | None = None,
) -> PlanSummary:
    """Plan summary from precomputed layer costs (see :func:`layer_costs`).

    Size counts the whole inference state, as :func:`save_packed` stores it: every parameter and buffer at its
    dtype's width, quantized weights at their bits plus float32 scales and 8-bit zero points, static activation
    ranges, and BatchNorm folded into weight-quantized convolutions (its state replaced by a float32 bias).
    ``bn_pairs`` are the folded (conv, bn) pairs; computed with torch.fx when omitted (pass them to save time).

    BOPs of a pruned layer count only its kept weights' MACs (``1 - pruned / total``, which is ``1 - sparsity`` up
    to rounding): this assumes a sparse kernel for unstructured pruning, and for channel pruning that the removed
    output channels are dropped from the layer. A low-rank layer counts ``r x (fan_in + out)`` MACs per output
    position (:func:`workbench.compress.low_rank_macs_ratio`) at the spec's bits (the intermediate activation is
    not quantized).
    """
    modules = dict(model.named_modules())
    pairs = folded_pairs(plan, model) if bn_pairs is None else bn_pairs
    fp32_bits = sum(t.numel() * t.element_size() * 8 for t in model.state_dict().values())
    bits_total = float(fp32_bits)
    quant_weight_params = sum(c.weight_params for c in costs.values())
    weight_only_ops = {t.__name__ for t in WEIGHT_ONLY_TYPES}
    act_params = sum(c.weight_params for c in costs.values() if c.op_type not in weight_only_ops)
    weight_bits_sum = act_bits_sum = 0.0
    macs_total = bops = 0
    weight_bits_total = fp32_weight_bits = 0
    for name, cost in costs.items():
        spec = plan.get(name, FP32)
        weight = modules[name].weight
        storage = layer_weight_storage_bits(spec, weight.shape)
        bits_total += storage - weight.numel() * weight.element_size() * 8
        weight_bits_total += storage
        fp32_weight_bits += 32 * weight.numel()
        weight_bits_sum += spec.mean_weight_bits() * cost.weight_params
        if cost.op_type in weight_only_ops:  # input is token ids: no activation range, not an activation
            continue
        if spec.a_bits < 16 and not spec.a_dynamic:
            in_ch = cost.input_shape[0] if cost.input_shape else 1
            bits_total += ACT_QPARAM_BITS * (in_ch if spec.a_granularity == "per_channel" else 1)
        act_bits_sum += spec.a_bits * cost.weight_params
        macs_total += cost.macs
        bops += int(
            round(spec.mean_weight_bits() * spec.a_bits * cost.macs * macs_factor(spec, weight.shape))
        )
    for conv_name, bn_name in pairs:
        bits_total -= _state_bits(modules[bn_name])
        if modules[conv_name].bias is None:
            bits_total += 32 * modules[conv_name].weight.shape[0]
    size_bytes = int(math.ceil(bits_total / 8))
    fp32_bytes = int(math.ceil(fp32_bits / 8))
    n_quant = sum(1 for n in costs if not plan.get(n, FP32).is_identity)
    covered: dict[int, int] = {}  # id(weight) -> elements: a weight shared by two layers counts once
    for n, s in plan.items():
        if not s.is_identity and n in modules:
            covered[id(modules[n].weight)] = modules[n].weight.numel()
    covered_params = sum(covered.values())
    total_params = sum(p.numel() for p in model.parameters())
    return PlanSummary(
        avg_weight_bits=weight_bits_sum / quant_weight_params if quant_weight_params else 32.0,
        avg_act_bits=act_bits_sum / act_params if act_params else 32.0,
        size_bytes=size_bytes,
        fp32_size_bytes=fp32_bytes,
        compression=fp32_bytes / size_bytes if size_bytes else float("inf"),
        bops=bops,
        fp32_bops=32 * 32 * macs_total,
        quantized_layers=n_quant,
        total_layers=len(costs),
        weight_bytes=int(math.ceil(weight_bits_total / 8)),
        fp32_weight_bytes=int(math.ceil(fp32_weight_bits / 8)),
        covered_params=covered_params,
        total_params=total_params,
        covered_fraction=covered_params / total_params if total_params else 0.0,
    )


def macs_factor(spec: QuantSpec, weight_shape) -> float:
    """MACs of the layer under ``spec`` over its dense MACs: kept fraction when pruned, factorised ratio when
    low-rank, 1 otherwise."""
    if spec.rank_ratio is not None:
        return low_rank_macs_ratio(weight_shape, rank_for(weight_shape, spec.rank_ratio))
    if spec.sparsity > 0:
        if spec.sparsity_structure == "channel":
            out = int(weight_shape[0])
            return (out - num_pruned(weight_shape, spec.sparsity, "channel")) / out
        n = int(math.prod(weight_shape))
        return (n - num_pruned(weight_shape, spec.sparsity, "unstructured")) / n
    return 1.0


def num_weight_groups(spec: QuantSpec, weight_shape) -> tuple[int, int]:
    """(rows, groups per row) of the scale grid for a weight of ``weight_shape`` under ``spec``."""
    out_ch = int(weight_shape[0])
    fan_in = int(math.prod(weight_shape[1:]))
    if spec.granularity == "per_tensor":
        return 1, 1
    if spec.granularity == "per_channel":
        return out_ch, 1
    return out_ch, math.ceil(fan_in / spec.group_size)


def layer_weight_storage_bits(spec: QuantSpec, weight_shape) -> int:
    """Exact storage of a quantized weight: packed integers + float32 scales + 8-bit zero points.

    16-bit weights are stored as 16-bit floats and 32-bit weights as float32 (no scales). Compressed layers:

    - unstructured pruning: the kept weights at their bits, a one-bit occupancy mask over all weights, and the
      scales / zero points of the dense layer;
    - channel pruning: a dense weight of the kept output channels (scales only for kept rows), removed rows cost
      nothing;
    - low-rank: factor ``A`` ``[out, r]`` plus factor ``B`` ``[r, fan_in]``, each quantized with the spec (per
      channel: one scale per row of each factor; per group: groups of ``group_size`` along each row; per tensor:
      one scale per factor).
    """
    shape = tuple(int(s) for s in weight_shape)
    if spec.rank_ratio is not None:
        out, fan_in = shape[0], math.prod(shape[1:])
        r = rank_for(shape, spec.rank_ratio)
        return _dense_storage_bits(spec, (out, r)) + _dense_storage_bits(spec, (r, fan_in))
    if spec.sparsity > 0:
        if spec.sparsity_structure == "channel":
            kept_rows = shape[0] - num_pruned(shape, spec.sparsity, "channel")
            return _dense_storage_bits(spec, (kept_rows, *shape[1:]))
        n = math.prod(shape)
        kept = n - num_pruned(shape, spec.sparsity, "unstructured")
        bits = kept * spec.w_bits + n  # kept values + one-bit occupancy mask
        if spec.w_bits >= 16:
            return bits
        n_scales = math.prod(num_weight_groups(spec, shape))
        return bits + n_scales * (SCALE_BITS + (0 if spec.w_symmetric else ZERO_POINT_BITS))
    return _dense_storage_bits(spec, shape)


def _dense_storage_bits(spec: QuantSpec, weight_shape) -> int:
    n = int(math.prod(weight_shape))
    out_ch = int(weight_shape[0])
    if spec.channel_bits is None and spec.w_bits >= 16:
        return spec.w_bits * n
    rows, groups = num_weight_groups(spec, weight_shape)
    if spec.channel_bits is not None:
        per_row = n // out_ch
        bits = sum(b * per_row for b in spec.channel_bits)
    else:
        bits = spec.w_bits * n
    n_scales = rows * groups
    bits += SCALE_BITS * n_scales
    if not spec.w_symmetric:
        bits += ZERO_POINT_BITS * n_scales
    return bits


# -- layer selection by glob patterns -----------------------------------------------------------------------
def _listing(names: list[str], limit: int = 40) -> str:
    """``names`` for an error message, cut after ``limit`` entries (a transformer has hundreds of layers)."""
    if len(names) <= limit:
        return str(names)
    return f"{names[:limit]} ... and {len(names) - limit} more"


def _nearest(text: str, names: list[str], n: int = 5) -> list[str]:
    """Names closest to ``text`` (a layer name or a glob pattern); the first few names when none is close."""
    bare = text.replace("*", "").replace("?", "").strip(".") or text
    near = difflib.get_close_matches(bare, names, n=n, cutoff=0.4)
    if not near:  # a pattern's tail (``*.dens``) against the names' tails
        tails = {name.rsplit(".", 1)[-1]: name for name in names}
        near = [tails[t] for t in difflib.get_close_matches(bare.rsplit(".", 1)[-1], list(tails), n=n)]
    return near or names[:n]


def _patterns(value: Iterable[str] | str | None, what: str) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    bad = [p for p in items if not isinstance(p, str) or not p.strip()]
    if bad:
        raise PlanError(f"{what} patterns must be non-empty strings (globs on layer names), got {bad!r}")
    return [p.strip() for p in items]


def match_layers(
    names: Iterable[str],
    include: Iterable[str] | str | None = None,
    exclude: Iterable[str] | str | None = None,
) -> list[str]:
    """The ``names`` (module paths, in their order) matched by any ``include`` glob (all names when ``include``
    is None) and by no ``exclude`` glob.

    Patterns are shell globs (:func:`fnmatch.fnmatchcase`, case-sensitive) on the whole module path: ``*``
    matches any run of characters, dots included (``*.dense`` matches ``encoder.layer.0.output.dense``,
    ``pooler*`` matches ``pooler.dense``), ``?`` one character, ``[abc]`` a set. A pattern that matches none of
    ``names`` raises :class:`PlanError` naming it and the nearest names; so does a selection that leaves nothing.
    """
    names = list(names)
    inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")
    for what, patterns in (("include", inc), ("exclude", exc)):
        for p in patterns:
            if not any(fnmatch.fnmatchcase(n, p) for n in names):
                raise PlanError(
                    f"{what} pattern {p!r} matches no quantizable layer; nearest layer names: {_nearest(p, names)} "
                    "(patterns are globs on the whole module path, e.g. '*.dense', 'encoder.*', 'pooler*')"
                )
    selected = [
        n
        for n in names
        if (include is None or any(fnmatch.fnmatchcase(n, p) for p in inc))
        and not any(fnmatch.fnmatchcase(n, p) for p in exc)
    ]
    if not selected:
        raise PlanError(f"include={inc} and exclude={exc} leave no layer selected; layers: {_listing(names)}")
    return selected


def _quantizable_or_raise(model: nn.Module) -> list[str]:
    names = quantizable_layers(model)
    if not names:
        supported = ", ".join(t.__name__ for t in QUANTIZABLE_TYPES)
        raise PlanError(
            f"{type(model).__name__} has no quantizable layers; supported layer types: {supported}"
        )
    return names


# -- shorthand ------------------------------------------------------------------------------------------------
_SHORTHAND = re.compile(r"^w(?P<w>[0-9]+)(?:a(?P<a>[0-9]+))?$")
_SELECTION_KEYS = ("include", "exclude")


def split_shorthand(text: str) -> tuple[str, list[str], list[str]]:
    """``'uniform:w4;include=*.dense,*.query;exclude=pooler*'`` -> ``('uniform:w4', ['*.dense', '*.query'],
    ['pooler*'])``: the spec part and the include / exclude globs of its ``;key=glob[,glob...]`` clauses."""
    spec_text, *clauses = str(text).split(";")
    found: dict[str, list[str]] = {k: [] for k in _SELECTION_KEYS}
    for clause in clauses:
        key, sep, value = clause.partition("=")
        key = key.strip()
        globs = [g.strip() for g in value.split(",")]
        if not sep or key not in found or not all(globs):
            raise PlanError(
                f"clause {clause!r} of {text!r} not understood; valid clauses: ';include=<glob>[,<glob>...]' and "
                "';exclude=<glob>[,<glob>...]', e.g. 'uniform:w4:per_channel;include=*.dense;exclude=pooler*'"
            )
        found[key] += globs
    return spec_text.strip(), found["include"], found["exclude"]


def parse_shorthand(text: str) -> QuantSpec:
    """The spec of a plan shorthand: ``uniform:w4a8:per_channel`` -> QuantSpec(w_bits=4, a_bits=8,
    granularity='per_channel').

    Grammar: ``uniform:<bits>[:<option>...][;include=<glob>,...][;exclude=<glob>,...]``.

    ``<bits>`` is ``w<W>a<A>`` (weights and activations, e.g. ``w4a8``; ``a16`` a 16-bit float cast) or ``w<W>``
    alone, a *weight-only* spec: activations stay float32 (``a_bits=32``, same as ``w<W>a32``).

    Options after the bits, in any order: a granularity (per_tensor, per_channel, per_group), ``g<N>`` (group
    size), ``asym`` / ``sym`` (weights), an observer (minmax, percentile, mse), ``dynamic`` (activation scales per
    batch), ``fp16`` / ``bf16`` (format of 16-bit specs), ``s<F>`` (unstructured pruning at sparsity F, e.g.
    ``s0.5``), ``cs<F>`` (channel pruning), ``r<F>`` (low-rank factorisation at rank ratio F, e.g. ``r0.25``).

    The ``;include=`` / ``;exclude=`` clauses select layers by glob patterns on their module paths (see
    :func:`match_layers`); they need a model, so only :meth:`QuantPlan.from_shorthand` takes them (use
    :func:`split_shorthand` to separate them).
    """
    help_text = (
        "expected 'uniform:w<W>a<A>[:option...]' or weight-only 'uniform:w<W>[:option...]', e.g. 'uniform:w8a8', "
        "'uniform:w4a8:per_channel', 'uniform:w4:per_group:g32', 'uniform:w4a8:per_group:g32:mse'"
    )
    if ";" in str(text):
        raise PlanError(
            f"{text!r} selects layers (';include=' / ';exclude='); that needs a model: use "
            "QuantPlan.from_shorthand(text, model)"
        )
    parts = [p.strip() for p in str(text).split(":")]
    if len(parts) < 2 or parts[0] != "uniform":
        raise PlanError(f"plan shorthand {text!r} not understood; {help_text}")
    m = _SHORTHAND.match(parts[1])
    if not m:
        raise PlanError(f"bits part {parts[1]!r} of {text!r} not understood; {help_text}")
    if max(len(m["w"]), len(m["a"] or "")) > 6:  # int() refuses > 4300 digits; no valid width has 7
        raise PlanError(f"bits part {parts[1]!r} of {text!r}: bits must be one of {_choices(VALID_BITS)}")
    kw: dict[str, Any] = {"w_bits": int(m["w"]), "a_bits": int(m["a"]) if m["a"] is not None else 32}
    for opt in parts[2:]:
        if opt in GRANULARITIES:
            kw["granularity"] = opt
        elif re.fullmatch(r"g[0-9]{1,18}", opt):
            kw["group_size"] = int(opt[1:])
        elif opt in ("asym", "sym"):
            kw["w_symmetric"] = opt == "sym"
        elif opt in OBSERVERS:
            kw["w_observer"] = opt
            kw["a_observer"] = opt
        elif opt == "dynamic":
            kw["a_dynamic"] = True
        elif opt in ("fp16", "bf16"):
            kw["float16_format"] = "float16" if opt == "fp16" else "bfloat16"
        elif m_c := re.fullmatch(r"(?P<kind>cs|s|r)(?P<v>[0-9]*\.?[0-9]+)", opt):
            value = float(m_c["v"])
            if m_c["kind"] == "r":
                kw["rank_ratio"] = value
            else:
                kw["sparsity"] = value
                kw["sparsity_structure"] = "channel" if m_c["kind"] == "cs" else "unstructured"
        else:
            valid = [
                *GRANULARITIES,
                "g<N>",
                "asym",
                "sym",
                *OBSERVERS,
                "dynamic",
                "fp16",
                "bf16",
                "s<F>",
                "cs<F>",
                "r<F>",
            ]
            raise PlanError(f"option {opt!r} in {text!r} not understood; valid options: {valid}")
    if kw.get("group_size") is not None and "granularity" not in kw:
        kw["granularity"] = "per_group"
    return QuantSpec(**kw)
