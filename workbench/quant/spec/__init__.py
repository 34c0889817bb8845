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

from workbench.quant.spec.bits import layer_weight_storage_bits, macs_factor, num_weight_groups
from workbench.quant.spec.layer import (
    ACT_GRANULARITIES,
    ACT_QPARAM_BITS,
    DYNAMIC_ACT_GRANULARITIES,
    FLOAT16_FORMATS,
    FLOAT_BITS,
    FP32,
    GRANULARITIES,
    INT_BITS,
    METHODS,
    OBSERVERS,
    PRUNE_STRUCTURES,
    SCALE_BITS,
    VALID_BITS,
    ZERO_POINT_BITS,
    PlanError,
    QuantSpec,
)
from workbench.quant.spec.plan import QuantPlan
from workbench.quant.spec.select import match_layers, parse_shorthand, split_shorthand
from workbench.quant.spec.summary import (
    PlanCosts,
    PlanSummary,
    folded_pairs,
    plan_costs,
    state_bits,
    summarize,
)

__all__ = [
    "ACT_GRANULARITIES",
    "ACT_QPARAM_BITS",
    "DYNAMIC_ACT_GRANULARITIES",
    "FLOAT16_FORMATS",
    "FLOAT_BITS",
    "FP32",
    "GRANULARITIES",
    "INT_BITS",
    "METHODS",
    "OBSERVERS",
    "PRUNE_STRUCTURES",
    "SCALE_BITS",
    "VALID_BITS",
    "ZERO_POINT_BITS",
    "PlanError",
    "PlanSummary",
    "QuantPlan",
    "QuantSpec",
    "folded_pairs",
    "layer_weight_storage_bits",
    "macs_factor",
    "match_layers",
    "num_weight_groups",
    "parse_shorthand",
    "split_shorthand",
    "summarize",
    "plan_costs",
    "PlanCosts",
    "state_bits",
]
