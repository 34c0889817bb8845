"""The metric registry: what a metric returns (:class:`MetricOutput`), the base classes
(:class:`SensitivityMetric`, :class:`OutputMetric`) and the metrics by name (:func:`register_metric`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from torch import Tensor, nn

from workbench.sensitivity.schema import FLOAT_BITS, METRIC_KINDS, ROW_KINDS, SPLITS


class MetricContext(Protocol):
    """What a metric reads from the analysis it runs in (:class:`workbench.sensitivity.probes.SensitivityContext`
    is the implementation, built on top of this registry): the float model, its layers and calibration
    batches, the config, the reference outputs and the probe engine."""

    config: Any
    float_model: nn.Module
    layers: Any
    batches: Any
    reference: Any
    targets: Any
    output_key: Any
    device: Any
    folded_bn: Any

    def run_probes(self, *args: Any, **kwargs: Any) -> Any: ...

    def weight(self, *args: Any, **kwargs: Any) -> Any: ...

    def hutchinson(self, *args: Any, **kwargs: Any) -> Any: ...


@dataclass
class MetricOutput:
    """What a metric returns: table rows, per-layer statistics and per-channel rows."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    layer_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    channel_rows: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self,
        layer: str,
        value: float,
        *,
        metric: str,
        kind: str = "layer",
        granularity: str = "per_tensor",
        w_bits: int = FLOAT_BITS,
        a_bits: int = FLOAT_BITS,
    ) -> None:
        """Append one table row (op_type and depth are filled in by :func:`analyze_sensitivity`)."""
        if kind not in ROW_KINDS:
            raise ValueError(f"row kind {kind!r} is not valid; choose one of {list(ROW_KINDS)}")
        self.rows.append(
            {
                "layer": layer,
                "metric": metric,
                "kind": kind,
                "granularity": granularity,
                "w_bits": int(w_bits),
                "a_bits": int(a_bits),
                "value": float(value),
            }
        )

    def add_layer_stat(self, layer: str, column: str, value: float) -> None:
        """Set a column of the per-layer table."""
        self.layer_stats.setdefault(layer, {})[column] = value

    def add_channels(
        self, layer: str, values: Sequence[float], *, metric: str, w_bits: int = FLOAT_BITS
    ) -> None:
        """Append one per-channel row per entry of ``values`` (channel index = position)."""
        for c, v in enumerate(values):
            self.channel_rows.append(
                {"layer": layer, "channel": c, "metric": metric, "w_bits": int(w_bits), "value": float(v)}
            )

    def extend(self, other: MetricOutput) -> None:
        self.rows.extend(other.rows)
        for layer, stats in other.layer_stats.items():
            self.layer_stats.setdefault(layer, {}).update(stats)
        self.channel_rows.extend(other.channel_rows)


class SensitivityMetric:
    """Base class of a sensitivity metric, selected by ``name`` in :class:`SensitivityConfig`.

    ``kind``: "probe" (one value per single-layer weight and activation probe; see :class:`OutputMetric`),
    "weight" (per weight bits and granularity), "activation" or "layer" (precision-free). ``produces``: the
    table metric names it writes (default ``(name,)``); ``layer_outputs``: those among them that are
    precision-free. ``needs_labels``: the metric uses the targets of the batches (a loss or an accuracy);
    analyses of data without labels refuse it. Subclasses implement :meth:`compute` and are registered with
    :func:`register_metric`.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "layer"
    produces: ClassVar[tuple[str, ...]] = ()
    layer_outputs: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    needs_labels: ClassVar[bool] = False

    @classmethod
    def outputs(cls) -> tuple[str, ...]:
        """Table metric names this metric writes."""
        return cls.produces or (cls.name,)

    def compute(self, ctx: MetricContext) -> MetricOutput:
        """Measure every layer of ``ctx`` (private model copies, data, shared estimators)."""
        raise NotImplementedError


class OutputMetric(SensitivityMetric):
    """A probe metric: compares the logits of the model with one layer quantized against the FP32 logits.

    ``split``: the data the logits come from ("calib" or "val"). Subclasses implement :meth:`score`; all output
    metrics of one analysis share the same forward passes.
    """

    kind: ClassVar[str] = "probe"
    split: ClassVar[str] = "calib"

    def score(self, reference: Tensor, quantized: Tensor, targets: Tensor | None) -> float:
        """Sensitivity of one probe from FP32 ``reference`` and ``quantized`` logits ``[N, classes]`` (the
        model's :func:`~workbench.quant.inputs.primary_output`, concatenated over the batches) and the
        ``targets`` ``[N]`` of the split (None for data without labels; higher = more sensitive)."""
        raise NotImplementedError

    def compute(self, ctx: MetricContext) -> MetricOutput:
        return ctx.run_probes([self])


METRICS: dict[str, type[SensitivityMetric]] = {}
"""Registered metrics by name (see :func:`register_metric`)."""


def register_metric(cls: type[SensitivityMetric]) -> type[SensitivityMetric]:
    """Class decorator: make a :class:`SensitivityMetric` subclass selectable by its ``name``.

    Re-registering the same class (same module and qualified name, e.g. a re-run notebook cell) replaces it;
    another class with a taken name raises (free it with :func:`unregister_metric`).
    """
    if not (isinstance(cls, type) and issubclass(cls, SensitivityMetric)):
        raise TypeError(f"register_metric expects a SensitivityMetric subclass, got {cls!r}")
    name = cls.name
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__qualname__}.name must be a non-empty string, got {name!r}")
    if cls.kind not in METRIC_KINDS:
        raise ValueError(
            f"{cls.__qualname__}.kind={cls.kind!r} is not valid; choose one of {list(METRIC_KINDS)}"
        )
    if issubclass(cls, OutputMetric) and cls.split not in SPLITS:
        raise ValueError(f"{cls.__qualname__}.split={cls.split!r} is not valid; choose one of {list(SPLITS)}")
    old = METRICS.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(
            f"metric name {name!r} is taken by {old.__module__}.{old.__qualname__}; "
            "pick another name or unregister_metric it first"
        )
    METRICS[name] = cls
    return cls


def unregister_metric(name: str) -> None:
    """Remove a registered metric (ValueError naming the available ones if absent)."""
    get_metric(name)
    del METRICS[name]


def available_metrics() -> list[str]:
    """Names of the registered metrics."""
    return sorted(METRICS)


def get_metric(name: str) -> SensitivityMetric:
    """A fresh instance of the metric registered as ``name``."""
    if name not in METRICS:
        raise ValueError(f"unknown sensitivity metric {name!r}; available: {available_metrics()}")
    return METRICS[name]()
