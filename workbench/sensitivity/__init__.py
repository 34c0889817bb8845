"""Sensitivity of each layer (and output channel) to each precision.

:func:`analyze_sensitivity` measures, for every quantizable layer of a task's model and every candidate
precision, how much quantizing *only that layer* hurts, with a set of registered metrics:

* ``output_mse`` / ``output_kl``: MSE and KL(FP32 softmax || quantized softmax) of the final logits against
  the FP32 logits on the calibration batches (a *probe*: one forward pass per layer and precision);
* ``acc_drop``: top-1 accuracy drop in percentage points on the validation split (also a probe): the metric
  loss (FP32 metric minus metric) of labelled accuracy, whatever the task's own metric;
* ``hessian``: the Hessian trace of each layer's weight by Hutchinson's estimator and the HAWQ-V2
  sensitivity ``omega = (trace / numel) * ||W - Q(W)||^2`` per weight bit width and granularity;
* ``fisher``: the mean over calibration samples of ``||dL/dy||^2`` of each layer's output ``y``.

Weight probes quantize one layer's weights (activations float, ``a_bits=32``); activation probes quantize one
layer's input activations (weights float, ``w_bits=32``, range calibrated on the calibration batches). Probes
run on a private copy of the model with BatchNorm folded into the convolutions exactly as
:func:`workbench.quant.quantize_model` folds it, so a probe's logits are those of
``quantize_model(model, QuantPlan({layer: spec}), calib)`` (up to float rounding of the fold). The Hessian and
the Fisher scores use the unfolded float model (the weights as the user sees them). The task's model is never
modified.

Metrics are small classes registered by name (:func:`register_metric`); a user metric that compares logits is a
subclass of :class:`OutputMetric` with a ``score`` method, any other one a :class:`SensitivityMetric` with a
``compute`` method.

Batches pass to the model as they come: ``(inputs, targets)`` tuples or inputs alone, the inputs a tensor, a
tuple or a dict of tensors (see :mod:`workbench.quant.inputs`); "logits" are the model output's
:func:`~workbench.quant.inputs.primary_output`, or the output the task's ``output_key`` chooses (a dict key,
an attribute or a tuple index; probes, losses and references all use it). ``acc_drop``, ``hessian`` and
``fisher`` need targets (``needs_labels``); on data without labels use ``output_mse`` / ``output_kl``.
``SensitivityResult.info`` records the task's ``metric_name`` and ``output_key``.

Tidy schema of ``SensitivityResult.table`` (one row per measurement)::

    layer        module path ("layer1.0.conv1")
    op_type      "Conv2d" / "Linear"
    depth        index of the layer in forward order (0 = first)
    metric       registered metric name ("output_mse", "output_kl", "acc_drop", "omega", "fisher", ...)
    kind         "weight" (only the layer's weights quantized, activations float) or "activation"
                 (only the layer's input activations quantized, weights float) or "layer" (precision-free,
                 e.g. hessian_trace, fisher; w_bits / a_bits are 32 there)
    granularity  weight granularity of the probe ("per_tensor", "per_channel"; "per_tensor" for activations)
    w_bits       weight bits of the probe (32 when weights stay float)
    a_bits       activation bits of the probe (32 when activations stay float)
    value        the measurement (higher = more sensitive)
"""

from __future__ import annotations

from workbench.sensitivity.analyze import analyze_sensitivity
from workbench.sensitivity.cache import CACHE_VERSION as CACHE_VERSION
from workbench.sensitivity.cache import SensitivityCacheWarning
from workbench.sensitivity.codec import _canonical_json as _canonical_json
from workbench.sensitivity.config import SensitivityConfig
from workbench.sensitivity.curvature import HutchinsonResult, fisher_scores, hutchinson_trace
from workbench.sensitivity.metrics import AccuracyDrop as AccuracyDrop
from workbench.sensitivity.metrics import FisherMetric as FisherMetric
from workbench.sensitivity.metrics import HessianMetric as HessianMetric
from workbench.sensitivity.metrics import OutputKL as OutputKL
from workbench.sensitivity.metrics import OutputMSE as OutputMSE
from workbench.sensitivity.probes import LayerInfo, Probe, SensitivityContext
from workbench.sensitivity.registry import (
    METRICS,
    MetricOutput,
    OutputMetric,
    SensitivityMetric,
    available_metrics,
    get_metric,
    register_metric,
    unregister_metric,
)
from workbench.sensitivity.result import SensitivityResult
from workbench.sensitivity.schema import CHANNEL_COLUMNS, COST_BENEFIT_COLUMNS, LAYER_COLUMNS, TABLE_COLUMNS
from workbench.sensitivity.schema import FLOAT_BITS as FLOAT_BITS
from workbench.sensitivity.schema import METRIC_KINDS as METRIC_KINDS
from workbench.sensitivity.schema import PROBE_GRANULARITIES as PROBE_GRANULARITIES
from workbench.sensitivity.schema import ROW_KINDS as ROW_KINDS
from workbench.sensitivity.schema import SPLITS as SPLITS
from workbench.sensitivity.tables import cost_benefit_table, rank_agreement

__all__ = [
    "CHANNEL_COLUMNS",
    "COST_BENEFIT_COLUMNS",
    "LAYER_COLUMNS",
    "METRICS",
    "TABLE_COLUMNS",
    "HutchinsonResult",
    "LayerInfo",
    "MetricOutput",
    "OutputMetric",
    "Probe",
    "SensitivityConfig",
    "SensitivityCacheWarning",
    "SensitivityContext",
    "SensitivityMetric",
    "SensitivityResult",
    "analyze_sensitivity",
    "available_metrics",
    "cost_benefit_table",
    "fisher_scores",
    "get_metric",
    "hutchinson_trace",
    "rank_agreement",
    "register_metric",
    "unregister_metric",
]
