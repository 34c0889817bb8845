"""QuantSpec and QuantPlan: what precision each layer gets, validated, JSON round-trip, summaries.

A :class:`QuantPlan` maps layer names (module paths) to :class:`QuantSpec` and is the unit that moves between
every stage of the workbench. It serialises to readable JSON::

    {"conv1": {"w_bits": 4, "a_bits": 8, "granularity": "per_channel", ...}, ...}
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from torch import nn

from workbench.compress import PRUNE_STRUCTURES, low_rank_macs_ratio, num_pruned, rank_for
from workbench.quant.introspect import LayerCost, layer_costs, quantizable_layers

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


@dataclass(frozen=True)
class QuantSpec:
    """How one layer is quantized.

    Bits: 2, 3, 4, 5, 6, 8 are integer grids; 16 is a float16/bfloat16 cast (``float16_format``); 32 leaves the
    tensor in float32. ``granularity`` applies to weights (per output channel = dim 0); ``group_size`` splits each
    output channel's flattened fan-in into groups with their own scale. ``channel_bits`` gives every output channel
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
        if self.channel_bits is not None and not isinstance(self.channel_bits, tuple):
            object.__setattr__(self, "channel_bits", tuple(int(b) for b in self.channel_bits))
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
        if not (50.0 < float(self.percentile) <= 100.0):
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
        unknown = sorted(set(d) - known)
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
        """A copy with some fields changed (validated)."""
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QuantPlan:
    """Layer name -> QuantSpec. Layers not in the plan stay float32."""

    layers: Mapping[str, QuantSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clean: dict[str, QuantSpec] = {}
        for name, spec in dict(self.layers).items():
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
    def uniform(cls, model: nn.Module, spec: QuantSpec, *, skip: tuple[str, ...] = ()) -> QuantPlan:
        """The same spec for every quantizable layer of ``model`` (except those in ``skip``)."""
        names = quantizable_layers(model)
        if not names:
            raise PlanError(
                f"{type(model).__name__} has no quantizable layers; supported layer types: Conv2d, Linear"
            )
        unknown = sorted(set(skip) - set(names))
        if unknown:
            raise PlanError(f"skip names unknown layers {unknown}; valid layers: {names}")
        return cls({n: spec for n in names if n not in skip})

    @classmethod
    def from_shorthand(cls, text: str, model: nn.Module) -> QuantPlan:
        """Parse ``uniform:w4a8[:per_channel|per_tensor|per_group:g32][:asym][:mse|percentile][:dynamic]``."""
        return cls.uniform(model, parse_shorthand(text))

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
    def from_json(cls, text: str) -> QuantPlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"plan is not valid JSON: {e}") from e
        return cls.from_dict(data)

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
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"plan file {path} does not exist")
        return cls.from_json(path.read_text())

    # -- validation and summaries -------------------------------------------------------------------------
    def validate(self, model: nn.Module) -> None:
        """Check every layer name exists and is quantizable, and per-channel bit vectors fit the layer."""
        names = quantizable_layers(model)
        if not names:
            raise PlanError(
                f"{type(model).__name__} has no quantizable layers; supported layer types: Conv2d, Linear"
            )
        unknown = [n for n in self.layers if n not in names]
        if unknown:
            raise PlanError(f"plan names unknown layer(s) {unknown}; valid layers: {names}")
        modules = dict(model.named_modules())
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
        if spec.a_bits < 16 and not spec.a_dynamic:
            in_ch = cost.input_shape[0] if cost.input_shape else 1
            bits_total += ACT_QPARAM_BITS * (in_ch if spec.a_granularity == "per_channel" else 1)
        weight_bits_sum += spec.mean_weight_bits() * cost.weight_params
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
    return PlanSummary(
        avg_weight_bits=weight_bits_sum / quant_weight_params if quant_weight_params else 32.0,
        avg_act_bits=act_bits_sum / quant_weight_params if quant_weight_params else 32.0,
        size_bytes=size_bytes,
        fp32_size_bytes=fp32_bytes,
        compression=fp32_bytes / size_bytes if size_bytes else float("inf"),
        bops=bops,
        fp32_bops=32 * 32 * macs_total,
        quantized_layers=n_quant,
        total_layers=len(costs),
        weight_bytes=int(math.ceil(weight_bits_total / 8)),
        fp32_weight_bytes=int(math.ceil(fp32_weight_bits / 8)),
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


_SHORTHAND = re.compile(r"^w(?P<w>\d+)a(?P<a>\d+)$")


def parse_shorthand(text: str) -> QuantSpec:
    """``uniform:w4a8:per_channel`` -> QuantSpec(w_bits=4, a_bits=8, granularity='per_channel').

    Options after the bits, in any order: a granularity (per_tensor, per_channel, per_group), ``g<N>`` (group
    size), ``asym`` / ``sym`` (weights), an observer (minmax, percentile, mse), ``dynamic`` (activation scales per
    batch), ``fp16`` / ``bf16`` (format of 16-bit specs), ``s<F>`` (unstructured pruning at sparsity F, e.g.
    ``s0.5``), ``cs<F>`` (channel pruning), ``r<F>`` (low-rank factorisation at rank ratio F, e.g. ``r0.25``).
    """
    help_text = "expected e.g. 'uniform:w8a8', 'uniform:w4a8:per_channel', 'uniform:w4a8:per_group:g32:mse'"
    parts = [p.strip() for p in str(text).split(":")]
    if len(parts) < 2 or parts[0] != "uniform":
        raise PlanError(f"plan shorthand {text!r} not understood; {help_text}")
    m = _SHORTHAND.match(parts[1])
    if not m:
        raise PlanError(f"bits part {parts[1]!r} of {text!r} not understood; {help_text}")
    kw: dict[str, Any] = {"w_bits": int(m["w"]), "a_bits": int(m["a"])}
    for opt in parts[2:]:
        if opt in GRANULARITIES:
            kw["granularity"] = opt
        elif re.fullmatch(r"g\d+", opt):
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
        elif m_c := re.fullmatch(r"(?P<kind>cs|s|r)(?P<v>\d*\.?\d+)", opt):
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
