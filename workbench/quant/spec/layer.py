"""QuantSpec: how one layer is quantized (bits, granularity, observers, compression), validated.

The bottom of the spec package: the valid choices, :class:`PlanError` and :class:`QuantSpec`.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from workbench.compress import PRUNE_STRUCTURES

INT_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
FLOAT_BITS: tuple[int, ...] = (16, 32)
VALID_BITS: tuple[int, ...] = INT_BITS + FLOAT_BITS
GRANULARITIES: tuple[str, ...] = ("per_tensor", "per_channel", "per_group")
ACT_GRANULARITIES: tuple[str, ...] = ("per_tensor", "per_channel")
DYNAMIC_ACT_GRANULARITIES: tuple[str, ...] = ("per_sample",)
"""Activation granularities valid only with ``a_dynamic=True``: ``per_sample`` is one range per input of the batch
(dim 0), recomputed at every batch, so no calibrated range can stand for it."""
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
    found at calibration, or a dynamic one recomputed from every batch when ``a_dynamic`` is true; a dynamic range
    may also be ``per_sample`` (one range per input of the batch, dim 0: an input's quantization does not depend
    on the other inputs it is batched with).

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
        self._validate_grid()
        self._validate_options()
        self._validate_compression()

    def _validate_grid(self) -> None:
        """Bits, granularities and group size."""
        for name in ("w_bits", "a_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value not in VALID_BITS:
                raise PlanError(f"{name}={value!r} is not supported; valid bits: {_choices(VALID_BITS)}")
        if self.granularity not in GRANULARITIES:
            raise PlanError(
                f"granularity={self.granularity!r} is not valid; choose one of {_choices(GRANULARITIES)}"
            )
        if self.a_granularity not in ACT_GRANULARITIES + DYNAMIC_ACT_GRANULARITIES:
            raise PlanError(
                f"a_granularity={self.a_granularity!r} is not valid; choose one of {_choices(ACT_GRANULARITIES)} "
                f"or, with a_dynamic=True, {_choices(DYNAMIC_ACT_GRANULARITIES)}"
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

    def _validate_options(self) -> None:
        """Flags, observers, percentile, float16 format and per-channel bits."""
        for name in ("w_symmetric", "a_symmetric", "a_dynamic"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise PlanError(
                    f"{name}={value!r} must be true or false (a JSON boolean), not {type(value).__name__}"
                )
        if self.a_granularity in DYNAMIC_ACT_GRANULARITIES and not self.a_dynamic:
            raise PlanError(
                f"a_granularity={self.a_granularity!r} needs a_dynamic=True (its range is recomputed for every "
                f"input); static activations use one of {_choices(ACT_GRANULARITIES)}"
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

    def _validate_compression(self) -> None:
        """Pruning and low-rank fields, and the methods they exclude."""
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
