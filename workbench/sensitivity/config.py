"""Knobs of a sensitivity analysis (:class:`SensitivityConfig`), validated when built, and the specs of its
weight and activation probes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.quant.spec import INT_BITS, QuantSpec
from workbench.sensitivity.registry import METRICS, available_metrics, get_metric
from workbench.sensitivity.schema import FLOAT_BITS, PROBE_GRANULARITIES


def _as_tuple(value: Any, name: str) -> tuple:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueError(f"SensitivityConfig.{name} must be a sequence, got {value!r}")
    return tuple(value)


def _check_bits(values: tuple, name: str, *, allow_empty: bool) -> tuple[int, ...]:
    if not values and not allow_empty:
        raise ValueError(f"SensitivityConfig.{name} must not be empty; valid bits: {list(INT_BITS)}")
    bad = [
        b for b in values if isinstance(b, bool) or not isinstance(b, int | np.integer) or b not in INT_BITS
    ]
    if bad:
        raise ValueError(f"SensitivityConfig.{name} has unsupported bits {bad}; valid bits: {list(INT_BITS)}")
    return tuple(sorted({int(b) for b in values}))


@dataclass(frozen=True)
class SensitivityConfig:
    """Knobs of :func:`analyze_sensitivity` (defaults work on the digits task).

    ``w_bits`` / ``a_bits``: candidate integer bits of the weight / activation probes (valid: 2, 3, 4, 5, 6, 8;
    ``a_bits=()`` skips activation probes). ``granularities``: weight granularities probed ("per_tensor",
    "per_channel"); activation probes are per tensor. ``metrics``: registered metric names
    (:func:`available_metrics`). ``calib_batches``: calibration batches used by the probes, the Hessian and
    the Fisher scores; ``val_batches``: validation batches of ``acc_drop`` (None: all).
    ``hutchinson_*``: the trace estimator stops for a layer when the relative change of its running mean stayed
    below ``hutchinson_tol`` for ``hutchinson_window`` consecutive iterations (after at least ``min_iter``), or
    at ``max_iter``. ``per_channel``: also fill the per-output-channel table. ``cost_metric``: the per-bit
    weight metric the cost-benefit table divides by (None: no cost-benefit table); ``reference_bits``: the
    precision savings are counted from. ``base_spec``: observer / symmetry / ... of the probes (its bits and
    granularity are replaced by each probe's). ``probe_cache_mb``: memory for the probes' outputs held until they
    are scored; on models traceable by torch.fx without in-place ops, the probes then run streamed (one FP32
    pass per batch and chunk of probes, each probe re-running only the part downstream of its layer); 0
    disables the reuse, then every probe runs the whole model; the results are the same. ``num_threads``: torch intra-op threads during
    the analysis (restored afterwards; None leaves torch's setting; 1 is much faster on a CPU shared with other
    busy processes). ``seed``: Hutchinson vectors and observers. ``include`` / ``exclude``: shell-style
    patterns of layer names (``fnmatch``, e.g. ``"_blocks.1.*"``) that select the layers analysed (empty
    ``include``: every quantizable layer); a pattern that matches no layer is an error naming the layers.
    """

    w_bits: tuple[int, ...] = (2, 3, 4, 6, 8)
    a_bits: tuple[int, ...] = (4, 6, 8)
    granularities: tuple[str, ...] = ("per_tensor", "per_channel")
    metrics: tuple[str, ...] = ("output_mse", "output_kl", "acc_drop", "hessian", "fisher")
    calib_batches: int = 2
    val_batches: int | None = None
    hutchinson_tol: float = 1e-2
    hutchinson_max_iter: int = 100
    hutchinson_min_iter: int = 8
    hutchinson_window: int = 3
    seed: int = 0
    per_channel: bool = True
    cost_metric: str | None = "output_mse"
    reference_bits: int = 8
    base_spec: QuantSpec = field(default_factory=QuantSpec)
    probe_cache_mb: float = 512.0
    num_threads: int | None = None
    progress: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("include", "exclude"):
            value = getattr(self, name)
            patterns = (value,) if isinstance(value, str) else _as_tuple(value, name)
            if not all(isinstance(p, str) and p for p in patterns):
                raise ValueError(
                    f"SensitivityConfig.{name} must be non-empty name patterns, got {patterns!r}"
                )
            set_(self, name, patterns)
        set_(self, "w_bits", _check_bits(_as_tuple(self.w_bits, "w_bits"), "w_bits", allow_empty=False))
        set_(self, "a_bits", _check_bits(_as_tuple(self.a_bits, "a_bits"), "a_bits", allow_empty=True))
        grans = tuple(dict.fromkeys(_as_tuple(self.granularities, "granularities")))
        bad = [g for g in grans if g not in PROBE_GRANULARITIES]
        if not grans or bad:
            raise ValueError(
                f"SensitivityConfig.granularities={list(grans)} is not valid; choose from {list(PROBE_GRANULARITIES)}"
            )
        set_(self, "granularities", grans)
        metrics = tuple(dict.fromkeys(_as_tuple(self.metrics, "metrics")))
        if not metrics:
            raise ValueError(f"SensitivityConfig.metrics must not be empty; available: {available_metrics()}")
        for name in metrics:
            get_metric(name)  # raises naming the available metrics
        set_(self, "metrics", metrics)
        for name in ("calib_batches", "hutchinson_max_iter", "hutchinson_min_iter", "hutchinson_window"):
            _check_positive_int(getattr(self, name), name)
        if self.val_batches is not None:
            _check_positive_int(self.val_batches, "val_batches")
        if self.hutchinson_min_iter > self.hutchinson_max_iter:
            raise ValueError(
                f"SensitivityConfig.hutchinson_min_iter={self.hutchinson_min_iter} exceeds "
                f"hutchinson_max_iter={self.hutchinson_max_iter}"
            )
        if not (isinstance(self.hutchinson_tol, int | float) and self.hutchinson_tol >= 0):
            raise ValueError(
                f"SensitivityConfig.hutchinson_tol must be a number >= 0, got {self.hutchinson_tol!r}"
            )
        if self.reference_bits not in INT_BITS:
            raise ValueError(
                f"SensitivityConfig.reference_bits={self.reference_bits!r} is not supported; valid bits: "
                f"{list(INT_BITS)}"
            )
        if not isinstance(self.base_spec, QuantSpec):
            raise ValueError(
                f"SensitivityConfig.base_spec must be a QuantSpec, got {type(self.base_spec).__name__}"
            )
        if not (isinstance(self.probe_cache_mb, int | float) and self.probe_cache_mb >= 0):
            raise ValueError(
                f"SensitivityConfig.probe_cache_mb must be a number >= 0, got {self.probe_cache_mb!r}"
            )
        if self.num_threads is not None:
            _check_positive_int(self.num_threads, "num_threads")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"SensitivityConfig.seed must be an int, got {self.seed!r}")
        if self.cost_metric is not None:
            per_bit = self.per_bit_weight_metrics()
            if self.cost_metric not in per_bit:
                raise ValueError(
                    f"SensitivityConfig.cost_metric={self.cost_metric!r} is not a per-bit weight metric produced "
                    f"by metrics={list(self.metrics)}; choose one of {per_bit} or None"
                )

    def per_bit_weight_metrics(self) -> list[str]:
        """Table metric names with per-w_bits weight rows that the selected metrics produce."""
        out: list[str] = []
        for name in self.metrics:
            cls = METRICS[name]
            if cls.kind in ("probe", "weight"):
                out.extend(n for n in cls.outputs() if n not in cls.layer_outputs)
        return out

    def selects(self, names: list[str]) -> list[str]:
        """The layers of ``names`` that ``include`` / ``exclude`` select (in order); a pattern matching none
        of ``names``, or a selection left empty, raises ``ValueError`` naming the layers."""
        from fnmatch import fnmatchcase

        for pattern in (*self.include, *self.exclude):
            if not any(fnmatchcase(n, pattern) for n in names):
                raise ValueError(f"layer pattern {pattern!r} matches none of the quantizable layers {names}")
        chosen = [n for n in names if not self.include or any(fnmatchcase(n, p) for p in self.include)]
        chosen = [n for n in chosen if not any(fnmatchcase(n, p) for p in self.exclude)]
        if not chosen:
            raise ValueError(
                f"include={list(self.include)} / exclude={list(self.exclude)} leave no layer of {names}"
            )
        return chosen

    def weight_spec(self, bits: int, granularity: str) -> QuantSpec:
        """The spec of a weight probe: ``base_spec`` with these weight bits and granularity, float activations."""
        return self.base_spec.with_(
            w_bits=bits, a_bits=FLOAT_BITS, granularity=granularity, group_size=None, channel_bits=None
        )

    def activation_spec(self, bits: int) -> QuantSpec:
        """The spec of an activation probe: ``base_spec`` with these activation bits, float weights."""
        return self.base_spec.with_(
            w_bits=FLOAT_BITS, a_bits=bits, granularity="per_tensor", group_size=None, channel_bits=None
        )


def _check_positive_int(value: Any, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"SensitivityConfig.{name} must be an int >= 1, got {value!r}")
