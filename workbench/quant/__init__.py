"""The quantization core: specs and plans, quantizers, observers, fake-quant modules, swap, packed storage.

This package depends on nothing above it (no tracking, search or UI imports); it builds on the pure-torch
:mod:`workbench.compress` for the pruning and low-rank methods a spec may add to quantization.
"""

from workbench.quant.adapters import LayerAdapter, register_adapter
from workbench.quant.coverage import Coverage, CoverageWarning, plan_coverage
from workbench.quant.error import WeightError, layer_weight, weight_error, weight_error_table
from workbench.quant.introspect import QUANTIZABLE_TYPES, LayerCost, layer_costs, quantizable_layers
from workbench.quant.modules import (
    ActQuantizer,
    QuantConv1d,
    QuantConv2d,
    QuantEmbedding,
    QuantLinear,
    WeightQuantizer,
    quant_twin,
    quantize_weight,
)
from workbench.quant.pack import PackReport, load_packed, read_header, save_packed
from workbench.quant.spec import (
    FP32,
    GRANULARITIES,
    METHODS,
    OBSERVERS,
    PRUNE_STRUCTURES,
    VALID_BITS,
    PlanError,
    PlanSummary,
    QuantPlan,
    QuantSpec,
    layer_weight_storage_bits,
    match_layers,
    parse_shorthand,
    split_shorthand,
)
from workbench.quant.swap import calibrate, quant_modules, quantize_model

__all__ = [
    "FP32",
    "GRANULARITIES",
    "METHODS",
    "OBSERVERS",
    "PRUNE_STRUCTURES",
    "QUANTIZABLE_TYPES",
    "VALID_BITS",
    "ActQuantizer",
    "Coverage",
    "CoverageWarning",
    "LayerAdapter",
    "LayerCost",
    "PackReport",
    "PlanError",
    "PlanSummary",
    "QuantConv1d",
    "QuantConv2d",
    "QuantEmbedding",
    "QuantLinear",
    "QuantPlan",
    "QuantSpec",
    "WeightError",
    "WeightQuantizer",
    "calibrate",
    "layer_costs",
    "layer_weight",
    "layer_weight_storage_bits",
    "load_packed",
    "match_layers",
    "parse_shorthand",
    "plan_coverage",
    "quant_twin",
    "quant_modules",
    "quantizable_layers",
    "quantize_model",
    "quantize_weight",
    "read_header",
    "register_adapter",
    "save_packed",
    "split_shorthand",
    "weight_error",
    "weight_error_table",
]
